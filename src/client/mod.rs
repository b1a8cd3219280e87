//! Producer library and worker (see issue 4).
