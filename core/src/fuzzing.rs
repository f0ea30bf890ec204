//! Entry points shared by the fuzz targets in `fuzz/` and the test that
//! replays their corpus on stable Rust.
