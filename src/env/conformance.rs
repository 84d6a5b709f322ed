//! The storage conformance suite (placeholder; being written).
