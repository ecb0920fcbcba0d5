//! Import of Cloud Migration Factory intake forms (being written).
