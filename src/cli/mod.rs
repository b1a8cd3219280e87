//! The `oprun` commands.
