//! Helpers for the cross-language suites.
