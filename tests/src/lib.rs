//! Shared helpers for end-to-end tests (fixture paths).
