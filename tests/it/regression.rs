//! Regression tests: one test per bug that was found and fixed, named after what went wrong,
//! each with a comment saying what the bug was and which contract it broke (docs/API.md).
//! A bug's test lives here rather than in its feature's module, so that what once broke
//! reads as one list. Tests here use the kit like any other module (`crate::kit`).
