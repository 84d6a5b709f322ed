//! Deterministic simulation testing for Retrace (skeleton; see README.md).

#[cfg(not(madsim))]
compile_error!(
    "retrace-sim must be built with `--cfg madsim`: add `[build] rustflags = [\"--cfg\", \"madsim\"]` \
     to .cargo/config.toml (see README.md, \"Simulation tests in your own repository\")"
);
