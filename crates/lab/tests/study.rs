//! The shipped study grids (`arlrr study --grid`) parse, with every run config they make.

#[path = "../../arl/tests/common.rs"]
mod common;

#[test]
fn every_shipped_study_grid_parses_with_its_run_configs() {
    let (_, grids) = common::shipped_configs();
    for path in &grids {
        lab::study::Grid::from_file(path).unwrap_or_else(|e| panic!("{e:#}"));
    }
    assert!(!grids.is_empty(), "no study grids");
}
