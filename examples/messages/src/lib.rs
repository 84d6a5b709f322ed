//! The order-of-messages workflow (being written).
