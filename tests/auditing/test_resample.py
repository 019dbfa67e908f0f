import numpy as np

from auditing.resample import mass_distribution, resample


def test_resampling_to_a_coarser_grid_averages_the_covered_cells():
    cell_map = np.arange(16 * 16, dtype=np.float64).reshape(16, 16)
    blocks = cell_map.reshape(8, 2, 8, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resample(cell_map, (8, 8)), blocks, rtol=1e-6)


def test_resampling_onto_a_grid_whose_edges_cut_cells_keeps_the_mass():
    rng = np.random.default_rng(3)
    cell_map = rng.random((7, 5))
    on_grid = resample(cell_map, (3, 4))
    # a cell of the 3x4 grid covers (7/3) x (5/4) source cells: mean x area = the source's total
    np.testing.assert_allclose(on_grid.sum() * (7 / 3) * (5 / 4), cell_map.sum(), rtol=1e-6)
    distribution = mass_distribution(cell_map.ravel(), (7, 5), (3, 4))
    assert abs(distribution.sum() - 1) < 1e-9
    assert distribution.min() >= 0
