//! Software RNIC (see DESIGN.md, "Soft fabric").
