from datetime import UTC, datetime
from importlib.metadata import version

import pyarrow as pa
import pytest

from storage import (
    ANSWERS_SCHEMA,
    REGION_NAMES,
    SCHEMA_VERSION,
    TOKENS_SCHEMA,
    ErrorRecord,
    SchemaError,
    code_version,
    table_schema,
    to_arrow,
)
from tests.storage.rows import answer_row, token_row


def test_schemas_carry_versions():
    metadata = table_schema("tokens").metadata
    assert metadata[b"vlm_audit.schema_version"] == SCHEMA_VERSION.encode()
    assert metadata[b"vlm_audit.code_version"] == code_version().encode() == version("vlm-audit").encode()
    assert "run_id" not in ANSWERS_SCHEMA.names and "run_id" not in TOKENS_SCHEMA.names
    assert len(REGION_NAMES) == 4 + 9 + 6 + 1 + 1  # quadrants, 3×3, lung zones, border, corners


def test_rows_convert_with_exact_types():
    table = to_arrow("tokens", [token_row(), token_row(peak_row=None)])
    assert table.schema.equals(TOKENS_SCHEMA)  # metadata aside
    assert table.column("image_relevance").type == pa.list_(pa.float32())
    assert table.column("region_shares")[0].as_py()["lung_left_lower"] == 0.25
    assert table.column("peak_row").to_pylist() == [1, None]
    answers = to_arrow("answers", [answer_row()])
    assert answers.column("metadata")[0].as_py() == [("site", "north"), ("sex", "F")]


def test_missing_nullable_columns_become_null():
    table = to_arrow("answers", [{"item_id": "a1", "status": "error"}])
    assert table.column("answer").to_pylist() == [None] and table.num_columns == len(ANSWERS_SCHEMA)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([answer_row(run_id="r1")], r"unknown column\(s\) \['run_id'\] \(run_id is the path partition"),
        ([answer_row(colour="red")], r"unknown column\(s\) \['colour'\]"),
        ([answer_row(n_targets="three")], r"answers\.n_targets: values do not fit int32"),
        ([answer_row(n_targets=2**40)], r"answers\.n_targets"),
        ([answer_row(), answer_row(item_id=None)], r"answers\.item_id: null in a non-null column at row 1"),
        ([{"answer": "x"}], r"answers\.item_id: required column is missing"),
        ([answer_row(status="done")], r"answers\.status: value 'done' not allowed; allowed: ok, error"),
        ([answer_row(metadata={"site": 3})], r"answers\.metadata"),
        (["not a mapping"], r"row 0 is a str"),
    ],
)
def test_answers_validation_names_the_column(rows, message):
    with pytest.raises(SchemaError, match=message):
        to_arrow("answers", rows)


def test_tokens_validation():
    with pytest.raises(
        SchemaError, match=r"tokens\.region_shares: row 0 has unknown key\(s\) \['lung_centre'\]"
    ):
        to_arrow("tokens", [token_row(region_shares={"lung_centre": 0.1})])
    with pytest.raises(SchemaError, match=r"tokens\.target_kind: value 'sentence' not allowed"):
        to_arrow("tokens", [token_row(target_kind="sentence")])
    with pytest.raises(SchemaError, match="unknown table 'token'; allowed: answers, tokens, errors"):
        to_arrow("token", [token_row()])


def test_table_input_is_cast_and_checked():
    table = pa.table({"item_id": ["a"], "generate_seconds": pa.array([1.5], pa.float64())})
    assert to_arrow("answers", table).column("generate_seconds").type == pa.float32()
    with pytest.raises(SchemaError, match=r"answers\.image_width"):
        to_arrow("answers", pa.table({"item_id": ["a"], "image_width": ["wide"]}))


def test_error_records_fit_the_errors_table():
    record = ErrorRecord.from_exception(ValueError("boom"), stage="explain", item_id="a1", row_number=3)
    table = to_arrow("errors", [record.to_row()])
    row = table.to_pylist()[0]
    assert (row["stage"], row["error_type"], row["message"]) == ("explain", "ValueError", "boom")
    assert row["occurred_at"].tzinfo is not None and row["occurred_at"] <= datetime.now(UTC)
    with pytest.raises(ValueError, match="stage 'train' is not one of manifest, image"):
        ErrorRecord("a", 1, None, "train", "X", "y")
