/* Smallest consumer of an installed libpatronus: built through pkg-config
 * and through CMake's find_package(Patronus) by tests/install.rs. */
#include <patronus.h>
#include <stdio.h>

int main(void) {
    patronus_gaddr_t g = patronus_gaddr(2, 4096);
    if (patronus_gaddr_node(g) != 2 || patronus_gaddr_offset(g) != 4096) {
        return 1;
    }
    printf("patronus ABI %u: %s\n", patronus_abi_version(), patronus_rc_str(PATRONUS_RC_OK));
    return 0;
}
