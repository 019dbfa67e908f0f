"""Names of the regions whose relevance mass shares every explained map carries."""

import pyarrow as pa

# lung zones are PATIENT sides: on a frontal radiograph the patient's right is the image's left
REGION_NAMES = (
    "q_top_left",
    "q_top_right",
    "q_bottom_left",
    "q_bottom_right",
    *(f"g_r{row}c{col}" for row in range(3) for col in range(3)),
    "lung_right_upper",
    "lung_right_middle",
    "lung_right_lower",
    "lung_left_upper",
    "lung_left_middle",
    "lung_left_lower",
    "border",
    "corners",
)
REGION_SHARES_TYPE = pa.struct([(name, pa.float32()) for name in REGION_NAMES])
