//! The `patronus` command line.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            let link = match std::env::var("PATRONUS_FABRIC").as_deref() {
                Ok("tcp") => patronus::fabric::soft::LinkKind::Tcp,
                _ => patronus::fabric::soft::LinkKind::Shm,
            };
            match patronus::demo::run(link, &mut std::io::stdout()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("patronus demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: patronus demo");
            ExitCode::from(2)
        }
    }
}
