//! Read planning: points → minimal reads (pure).
