"""The names every layer shares: regions, target kinds, methods, flag scopes and how answers assert.

One source: the explainer's methods and regions, storage's schemas, auditing's rules, the report and
the SQL views take these names from here, so a new region or method is named once. A leaf module: it
imports nothing. Rule names and titles live with their rules (`auditing.rules`).
"""

from __future__ import annotations

# lung zones are PATIENT sides: on a frontal radiograph the patient's right is the image's left
LUNG_ZONES = (
    "lung_right_upper",
    "lung_right_middle",
    "lung_right_lower",
    "lung_left_upper",
    "lung_left_middle",
    "lung_left_lower",
)
QUADRANTS = ("q_top_left", "q_top_right", "q_bottom_left", "q_bottom_right")


def grid3_cell(row: int, col: int) -> str:
    """The name of one cell of the 3×3 grid of image thirds."""
    return f"g_r{row}c{col}"


BORDER, CORNERS = "border", "corners"
REGION_NAMES = (
    *QUADRANTS,
    *(grid3_cell(row, col) for row in range(3) for col in range(3)),
    *LUNG_ZONES,
    BORDER,
    CORNERS,
)
# how the report names the regions it tabulates
REGION_LABELS = {
    "lung_right_upper": "Right lung, upper zone",
    "lung_right_middle": "Right lung, middle zone",
    "lung_right_lower": "Right lung, lower zone",
    "lung_left_upper": "Left lung, upper zone",
    "lung_left_middle": "Left lung, middle zone",
    "lung_left_lower": "Left lung, lower zone",
    "q_top_left": "Image top-left quarter",
    "q_top_right": "Image top-right quarter",
    "q_bottom_left": "Image bottom-left quarter",
    "q_bottom_right": "Image bottom-right quarter",
    BORDER: "Image border band",
    CORNERS: "Image corners (markers, tags)",
}
# regions where a chest radiograph carries no evidence: mass there suggests a shortcut
SHORTCUT_REGIONS = {
    BORDER: "the image border band",
    CORNERS: "the corner blocks (markers, burned-in tags)",
}
OUTSIDE_LUNGS = "outside_lungs"  # 1 − the lung zones' share: what the cluster rule also tests
OUTSIDE_BODY = "outside_body"  # volumes: the share on cells outside the body, over the slices

# what an explained target is: one answer token, one answer word, or the whole answer
TOKEN, WORD, ANSWER = "token", "word", "answer"
TARGET_KINDS = (TOKEN, WORD, ANSWER)

# relevance methods (each is the module `explainer.methods.<name>`) and the perturbation references
CHEFER, ROLLOUT, RAW_ATTENTION = "chefer", "rollout", "raw_attention"
OCCLUSION, PIXEL_OCCLUSION, IMAGE_OCCLUSION = "occlusion", "pixel_occlusion", "image_occlusion"
METHOD_NAMES = (CHEFER, ROLLOUT, RAW_ATTENTION, OCCLUSION, PIXEL_OCCLUSION, IMAGE_OCCLUSION)
REFERENCE_NAMES = {
    OCCLUSION: "token occlusion",
    PIXEL_OCCLUSION: "pixel occlusion",
    IMAGE_OCCLUSION: "image occlusion",
}
# the references other maps are checked against cell by cell: the language model's own (token
# occlusion) first, then one that also sees the vision tower (pixel occlusion)
REFERENCE_METHODS = (OCCLUSION, PIXEL_OCCLUSION)
# the reference for prompts of several images, image by image: which images the answer needs
IMAGE_REFERENCE = IMAGE_OCCLUSION
# how the language model's attention is run while explaining: "eager" keeps every layer's maps (fast
# for short prompts), "blockwise" keeps none (memory linear in length), "auto" picks by a memory estimate
ATTENTION_PATHS = ("auto", "eager", "blockwise")

# a flag is about one item (a worklist entry for a reviewer), or about the model: a cohort of a
# manifest column, a cluster of maps, or the trustworthiness of the maps themselves
ITEM_SCOPE, COHORT_SCOPE, CLUSTER_SCOPE = "item", "cohort", "cluster"
FLAG_SCOPES = (COHORT_SCOPE, CLUSTER_SCOPE, ITEM_SCOPE)
MODEL_SCOPES = (COHORT_SCOPE, CLUSTER_SCOPE)

# how an answer asserts a finding it mentions, and the patient side it names (auditing.mentions reads
# them; the mentions table stores them)
PRESENT, ABSENT, UNCERTAIN = "present", "absent", "uncertain"
ASSERTIONS = (PRESENT, ABSENT, UNCERTAIN)
RIGHT, LEFT, BILATERAL = "right", "left", "bilateral"
SIDES = (RIGHT, LEFT, BILATERAL)
