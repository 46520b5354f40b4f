"""The parity suite: the port against MatConvNet 1.0-beta18's own numbers.

`references` reads the reference files (../shared/parity/FORMAT.md),
`compare` holds the error measure and the tolerances, `runner.run_parity`
drives the library on every file and returns a `ParityReport`;
`train_reference` replays the CQD training steps. `matconvnet/export_reference.m`
writes a reference for a user's own model, from MATLAB; `mat_v7.write_v7_copy`
(`cqd-port v7-copy`) writes the MAT v7 copy of a model file it needs under Octave.
"""
