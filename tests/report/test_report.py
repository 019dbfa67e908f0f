"""The static HTML report, read without a browser: what it says, and that every image it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from auditing import AggregateConfig, StatsConfig, aggregate_run
from auditing.flags import FlagThresholds
from auditing.report import RunNotFound, build_report
from auditing.report.data import ImageReader
from auditing.report.gallery import MAX_GALLERY_ITEMS, overlay_label
from auditing.report.sections import timing_rows, trust_verdict
from auditing.rules.off_anatomy import OFF_ANATOMY_RULE
from storage import open_store, write_part
from tests.report.fixtures import phantom_png, write_synthetic_run
from tests.report.pages import parse_page, squash


def test_report_names_the_run_its_cohorts_and_a_how_to_read_note(built_report):
    text = built_report.page.text
    assert "synthetic-phantom (revision abc123)" in text and "Relevance method chefer" in text
    assert "Items audited 60" in text and "Answered 60 (100.0%)" in text
    assert "2024-06-01T12:00:00+00:00" in text and "Total time 12.5 s" in text
    for cohort in ("whole run", "site = east", "site = north", "site = south"):
        assert cohort in text
    assert (
        "Lung sides are the patient's sides" in text and "A flag is a reason to look, not a verdict" in text
    )
    assert "min–max" in text


def test_every_flag_message_is_on_the_page_with_its_rule(built_report):
    flags, text = built_report.flags, built_report.page.text
    assert len(flags) > 20  # cohort flags of east plus 20 off-anatomy items
    for flag in flags.itertuples():
        assert squash(flag.message) in text, flag.rule
        assert flag.rule in text
    assert "Looks at the image border" in text and "100% vs 0% in the rest (flag at ≥ 1.5× the rest)" in text
    assert "Looks outside the lungs: 20 items" in text
    # flags come first: before the cohort pictures and the gallery
    assert text.index("Flags: what deserves") < text.index("Cohorts: where the model looked")


def test_every_image_resolves_to_a_file_beside_the_page_and_reports_when_missing(built_report):
    images, folder = built_report.page.images, built_report.index.parent
    assert images, "the report has no images"
    for image in images:
        src = image["src"]
        assert src.startswith("img/") and (folder / src).is_file(), src
        assert image["onerror"] == "imageMissing(this)" and image.get("alt")
    html = built_report.index.read_text(encoding="utf-8")
    assert 'textContent = "image not found: "' in html
    # offline: no external script, style, font or image (the only URL is the SVG namespace)
    assert built_report.page.links and all(link.startswith("#") for link in built_report.page.links)
    assert set(re.findall(r"https?://[^\s\"')]+", html)) == {"http://www.w3.org/2000/svg"}


def test_cohort_sections_draw_the_answer_and_the_finding_word(built_report):
    images = [image["src"] for image in built_report.page.images]
    heatmaps = [src for src in images if src.startswith("img/cohort-")]
    assert len(heatmaps) == 4 * 2  # whole run + three sites, × ('answer', 'nodule')
    text = built_report.page.text
    assert "The whole answer" in text and "The word 'nodule'" in text
    assert "Right lung, upper zone" in text and "Image border band" in text
    assert text.count("Background: the mean of 20 of the cohort's 20 images") == 3
    assert "Background: the mean of 32 of the cohort's 60 images" in text  # the whole run: at most 32


def test_gallery_shows_flagged_items_with_original_and_overlays(built_report):
    page, text = built_report.page, built_report.page.text
    cards = sorted(i for i in page.ids if i.startswith("item-"))
    assert 0 < len(cards) <= MAX_GALLERY_ITEMS
    assert {card.removeprefix("item-").split("-")[0] for card in cards} == {"east"}
    east0 = [image["alt"] for image in page.images if image["src"].startswith("img/item-east-0-")]
    assert sorted(east0) == [
        "Original image of item east-0",
        "Whole answer of item east-0",
        'Word "nodule" of item east-0',
    ]
    assert "in flagged cohort site = east" in text
    assert "no overlays were stored for this item" in text  # east-2.. have none in the fixture


def test_trust_table_gives_a_verdict_per_cohort_method_and_reference(built_report):
    text = built_report.page.text
    assert "Can the heatmaps be trusted?" in text and "vision tower moved the evidence" in text
    for reference in ("token occlusion", "pixel occlusion"):
        assert re.search(
            rf"site = east chefer {reference} 20 20 0% \(0%–16%\) 0% .*?Not trustworthy: its peak misses the "
            rf"{reference} evidence",
            text,
        )
        assert re.search(
            rf"site = north chefer {reference} 20 20 100% \(84%–100%\) 8\d% .*?Trustworthy: agrees with {reference}",
            text,
        )
    assert "Reference: pixel occlusion itself" in text


@pytest.mark.parametrize(
    ("row", "verdict", "css"),
    [
        ({"n_checkable": 0}, "Not checkable: in fewer than 5 items", "neutral"),
        ({"n_checkable": 4}, "Not checkable", "neutral"),
        (
            {"n_checkable": 5, "peak_in_evidence_ci_low": 0.57},
            "Trustworthy: agrees with pixel occlusion",
            "good",
        ),
        ({}, "Trustworthy", "good"),  # a cohort_trust table aggregated before the columns existed
        (
            {"n_checkable": 6, "peak_in_evidence_ci_low": 0.3, "peak_in_evidence_ci_high": 0.9},
            "Undecided",
            "warn",
        ),
        ({"n_checkable": 20, "randomization_spearman": 0.9}, "Doubtful", "warn"),
    ],
)
def test_each_trust_row_gets_a_verdict_from_its_evidence_interval(row, verdict, css):
    base = {"method": "chefer", "reference": "pixel_occlusion", "n_items": 20, "randomization_spearman": 0.1}
    found = trust_verdict(pd.Series({**base, **row}), None, FlagThresholds())
    assert found.verdict.startswith(verdict) and found.css == css and found.basis.endswith(".")


def test_flagged_trust_rows_say_why():
    row = pd.Series({"method": "occlusion", "reference": "pixel_occlusion", "n_items": 20, "n_checkable": 20})
    assert trust_verdict(row, "evidence_relocated", FlagThresholds()).verdict.startswith("Evidence relocated")
    chefer = row.copy()
    chefer["method"] = "chefer"
    found = trust_verdict(chefer, "explanations_not_trustworthy", FlagThresholds())
    assert (found.verdict, found.css) == (
        "Not trustworthy: its peak misses the pixel occlusion evidence",
        "bad",
    )


def test_unreadable_images_are_reported_in_words_and_the_heatmaps_drawn_alone(tmp_path):
    write_synthetic_run(
        tmp_path, "r1", images=None, overlays=()
    )  # image URIs point at files that don't exist
    index = Path(build_report(str(tmp_path), "r1"))
    page = parse_page(index.read_text(encoding="utf-8"))
    assert (
        page.text.count(
            "Background: neutral grey, no patient's anatomy: the cohort's images could not be read"
        )
        == 4
    )
    assert ": ObjectNotFound: " in page.text
    assert not any(image["src"].startswith("img/item-") for image in page.images)
    assert all((index.parent / image["src"]).is_file() for image in page.images)
    assert sum(image["src"].startswith("img/cohort-") for image in page.images) == 8


def test_report_images_are_confined_as_the_run_confined_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(phantom_png(0))
    (tmp_path / "secret.png").write_bytes(phantom_png(1))
    (data / "leak.png").symlink_to(tmp_path / "secret.png")
    local = ImageReader({"manifest_uri": str(data / "manifest.csv"), "config": {}})
    assert local.read("a.png").image is not None and local.read(str(data / "a.png")).image is not None
    for uri in ("leak.png", "../secret.png", str(tmp_path / "secret.png"), f"file://{tmp_path}/secret.png"):
        loaded = local.read(uri)
        assert loaded.image is None and loaded.problem.startswith("InputNotAllowed: "), uri
    s3_run = {"manifest_uri": "s3://scans/batch/manifest.csv", "config": {"manifest": "s3://scans/m.csv"}}
    assert ImageReader(s3_run).read(str(tmp_path / "secret.png")).problem.startswith("InputNotAllowed: ")
    s3_run["config"]["allowed_inputs"] = [str(tmp_path)]
    assert ImageReader(s3_run).read(str(tmp_path / "secret.png")).image is not None
    s3_run["config"]["max_image_bytes"] = 100
    assert ImageReader(s3_run).read(str(tmp_path / "secret.png")).problem.startswith("ObjectTooLarge: ")
    nowhere = ImageReader(None).read(str(data / "a.png"))
    assert nowhere.image is None and "no manifest location in run.json" in nowhere.problem


def test_without_run_json_or_an_aggregation_the_report_computes_nothing_and_says_what_to_run(tmp_path):
    write_synthetic_run(tmp_path, "r1", images=tmp_path / "images", run_json=False, overlays=())
    store = open_store(str(tmp_path))
    for table in ("cohort_stats", "cohort_regions", "cohort_comparisons", "cohort_trust", "flags"):
        store.delete(f"{table}/run_id=r1/part-aggregate.parquet")
    store.delete("runs/run_id=r1/aggregate.json")
    store.write_bytes("report/run_id=r1/img/stale.png", b"old")
    index = Path(build_report(str(tmp_path), "r1"))
    text = parse_page(index.read_text(encoding="utf-8")).text
    assert "no run.json: counts come from the tables" in text and "Items audited 60" in text
    assert "This run was not aggregated" in text and f"vlm-audit aggregate {store.root} r1" in text
    assert "Looks outside the lungs" not in text  # no flag the aggregation did not write
    assert not (index.parent / "img" / "stale.png").exists()


def test_the_report_shows_the_flags_and_thresholds_the_aggregation_recorded(tmp_path):
    write_synthetic_run(tmp_path, "r1", images=tmp_path / "images", overlays=(), faithfulness=True)
    strict = AggregateConfig(
        group_by=("site",),
        stats=StatsConfig(resamples=100),
        thresholds=FlagThresholds(off_anatomy_lung_share=0.0, trust_min_reference_drop=0.25),
    )
    written = aggregate_run(str(tmp_path), "r1", strict).flag_table
    assert OFF_ANATOMY_RULE not in set(written["rule"])  # a threshold no map falls below
    text = parse_page(Path(build_report(str(tmp_path), "r1")).read_text(encoding="utf-8")).text
    assert all(message in text for message in written["message"])
    assert "Looks outside the lungs" not in text  # the defaults would raise 20 of them
    assert "by at least 0.25" in text  # the recorded trust threshold, not the default 0.1


def test_a_run_where_every_item_failed_shows_why(tmp_path):
    store = open_store(str(tmp_path))
    failed = [
        {
            "item_id": f"a-{index}",
            "row_number": index,
            "image_uri": f"/nowhere/a-{index}.png",
            "status": "error",
        }
        for index in range(3)
    ]
    write_part(store, "answers", "r9", 0, failed)
    errors = [
        {**row, "stage": "image", "error_type": "ObjectNotFound", "message": "no such object"}
        for row in failed
    ]
    write_part(store, "errors", "r9", 0, [{k: v for k, v in row.items() if k != "status"} for row in errors])
    text = parse_page(Path(build_report(str(tmp_path), "r9")).read_text(encoding="utf-8")).text
    assert "Items audited 3" in text and "Answered 0 (0.0%)" in text and "Failed 3" in text
    assert "image ObjectNotFound 3 no such object" in text
    assert "No flags were raised" in text and "the run has no explained targets" in text


def test_a_run_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        build_report(str(tmp_path), "nope")


@pytest.mark.parametrize(
    ("stem", "label"),
    [
        ("answer", "Whole answer"),
        ("word-effusion", 'Word "effusion"'),
        ("token-003-left", 'Token 3 "left"'),
        ("word-left_lung-3fa2c1d0", 'Word "left_lung"'),
        ("answer-image1", "Whole answer (image 2)"),
        ("answer-slice042", "Whole answer (slice 42)"),
        ("word-nodule-volume1-slice007", 'Word "nodule" (volume 2, slice 7)'),
        ("answer-profile", "Whole answer (slice profile)"),
    ],
)
def test_overlay_file_names_become_plain_labels(stem, label):
    assert overlay_label(stem) == label


@pytest.mark.integration
def test_report_is_written_to_s3_beside_its_images(s3_bucket, tmp_path):
    out = f"{s3_bucket}/audit-out"
    write_synthetic_run(out, "r1", images=tmp_path / "images", overlays=("east-0",), per_site=6)
    uri = build_report(out, "r1")
    assert uri == f"{out}/report/run_id=r1/index.html"
    store = open_store(out)
    page = parse_page(store.read_bytes("report/run_id=r1/index.html").decode())
    assert "site = east" in page.text
    assert all(store.exists(f"report/run_id=r1/{image['src']}") for image in page.images)
    assert any(image["src"] == "img/item-east-0-answer.png" for image in page.images)


def test_studies_section_shows_volumes_and_flags_answers_that_ignore_the_prior(tmp_path):
    from auditing import AggregateConfig, aggregate_run
    from tests.auditing.synthetic import study_item

    items = [
        study_item(
            f"{site}-{index}",
            site,
            [share + 0.01 * index, 1 - share - 0.01 * index],
            labels=["prior", "current"],
        )
        for site, share in (("north", 0.01), ("south", 0.4))
        for index in range(8)
    ]
    items += [study_item(f"vol-{index}", "south", [0.0, 0.2, 0.8], n_slices=5) for index in range(1, 6)]
    store = open_store(str(tmp_path))
    write_part(store, "answers", "r1", 0, [answer for answer, _ in items])
    write_part(store, "tokens", "r1", 0, [row for _, rows in items for row in rows])
    aggregate_run(str(tmp_path), "r1", AggregateConfig(group_by=("site",)))
    page = parse_page(Path(build_report(str(tmp_path), "r1")).read_text(encoding="utf-8"))
    text = squash(page.text)
    assert "Studies: volumes and priors" in text
    assert "Answers about change barely look at the prior" in text  # the flag, with its title
    assert "site = north answer 8 " in text and "8 of 8" in text
    # the volume items sit at 0.2 × 2/4 + 0.8 × 4/4 = 90% of the way along their volumes
    assert "site = south answer 5 90%" in text


def test_the_page_opens_with_the_verdict_one_row_per_finding_linked_to_its_evidence(built_report):
    text, flags = built_report.page.text, built_report.flags
    model_flags = flags[flags["scope"] != "item"]
    findings = model_flags.drop_duplicates(["rule", "grouping", "cohort", "target_class"])
    assert text.index("Verdict") < text.index("How to read this report")  # the verdict comes first
    n_cohort, n_cluster, n_items = (
        int((flags["scope"] == scope).sum()) for scope in ("cohort", "cluster", "item")
    )
    assert n_cluster == 1  # the east site's border maps, found again as a strategy
    assert f"{n_cohort} cohort flags, 1 cluster flag and {n_items} item flags raised." in text
    html = built_report.index.read_text(encoding="utf-8")
    verdict = html[html.index('id="verdict"') : html.index('id="how-to-read"')]
    assert verdict.count("<tr>") == len(findings) + 1  # a header and one row per finding
    assert "site = east: looks at the image border" in squash(text)
    east = next(c for c in re.findall(r'id="(cohort-\d+)"[^>]*data-cohort="east"', html))
    assert f'href="#{east}"' in verdict  # the finding links to its cohort's section


def _cohort_table(html: str) -> str:
    start = html.index('<table class="flags findings-table">')
    return html[start : html.index("</table>", start)]


def test_the_flags_table_has_one_row_per_finding_and_a_column_per_method(built_report):
    flags = built_report.flags[built_report.flags["scope"] != "item"]
    findings = flags.drop_duplicates(["rule", "grouping", "cohort", "target_class"])
    assert len(findings) < len(flags)  # the fixture repeats findings across methods
    table = _cohort_table(built_report.index.read_text(encoding="utf-8"))
    assert table.count('<tr class="flag">') == len(findings)
    header = re.findall(r"<th>([^<]*)</th>", table)
    assert header == ["What was found", "Where", "Target", *flags["method"].unique(), "Details"]
    rows = {}
    for row in table.split('<tr class="flag">')[1:]:
        where, target = re.findall(r"<td>([^<]*)</td>", row)[:2]
        rule = re.search(r'class="code">(\w+)', row)[1]
        rows[where, target, rule] = re.findall(r'<td class="method-cell">([^<]*)</td>', row)
    border = rows["site = east", "answer", "border_share_above_baseline"]
    assert border == ["100% vs 0% in the rest (flag at ≥ 1.5× the rest)"] * 2  # raised by both methods
    assert (
        rows["site = east", "nodule", "border_share_above_baseline"][1] == "–"
    )  # the sample has no 'nodule'
    trust = rows["site = east", "answer", "explanations_not_trustworthy"]
    assert trust[0].startswith("occlusion: 0%") and "pixel occlusion: 0%" in trust[0]


def test_the_markdown_artifact_has_one_row_per_finding_too(built_report):
    from auditing.report.summary import flag_records, run_markdown

    records = flag_records(built_report.flags)
    model = built_report.flags[built_report.flags["scope"] != "item"]
    n_findings = len(model.drop_duplicates(["rule", "grouping", "cohort", "target_class"]))
    cohort = model[model["scope"] == "cohort"]
    markdown = run_markdown("r1", records, {"items": 60}, "report/index.html")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0] == "| finding | where | target | chefer | chefer (faithfulness sample) |"
    assert len(table) == 1 + n_findings
    assert (
        "| Looks at the image border | site = east | nodule | 100% vs 0% in the rest (flag at ≥ 1.5× the rest) | – |"
        in table
    )
    assert markdown.index(f"**{len(cohort)} cohort flags, ") < markdown.index("| finding")


@pytest.mark.parametrize(
    ("numbers", "basis"),
    [
        (
            {
                "n_checkable": 13,
                "peak_in_evidence_rate": 12 / 13,
                "peak_in_evidence_ci_low": 0.667,
                "peak_in_evidence_ci_high": 0.986,
                "spearman_median": 0.08,
            },
            "Its peak falls in the token occlusion evidence in 12 of 13 checkable items (92%, 95% interval "
            "67%–99%); the rank correlation (0.08) is low because token occlusion changes the answer in only a "
            "few regions and is noise elsewhere, and the verdict rests on the peak, not on the ranks.",
        ),
        (
            {
                "n_checkable": 20,
                "peak_in_evidence_rate": 0.9,
                "peak_in_evidence_ci_low": 0.7,
                "peak_in_evidence_ci_high": 0.97,
                "spearman_median": 0.61,
            },
            "Its peak falls in the token occlusion evidence in 18 of 20 checkable items (90%, 95% interval "
            "70%–97%); the rank correlation (0.61) agrees, though the verdict rests on the peak.",
        ),
        (
            {"n_checkable": 3, "peak_in_evidence_rate": 1.0},
            "In 3 of 20 sampled items does removing one region lower the answer's score by at least 0.1 logits",
        ),
        (
            {
                "n_checkable": 8,
                "peak_in_evidence_rate": 0.5,
                "peak_in_evidence_ci_low": 0.22,
                "peak_in_evidence_ci_high": 0.78,
            },
            "in 4 of 8 checkable items (50%, 95% interval 22%–78%); the interval reaches below 50%",
        ),
    ],
)
def test_each_trust_verdict_says_in_one_sentence_what_it_rests_on(numbers, basis):
    row = pd.Series(
        {
            "method": "chefer",
            "reference": "occlusion",
            "n_items": 20,
            "randomization_spearman": 0.1,
            **numbers,
        }
    )
    assert basis in trust_verdict(row, None, FlagThresholds()).basis


def test_trust_rows_show_their_basis_under_the_verdict(built_report):
    html = built_report.index.read_text(encoding="utf-8")
    trust = html[html.index('id="trust"') :]
    cells = re.findall(r'<span class="(\w+)">([^<]*)</span><p class="basis">([^<]*)</p>', trust)
    assert len(cells) == trust.count("<tr>") - trust.count("<th>Cohort</th>")  # one under every verdict
    north = [basis for css, verdict, basis in cells if css == "good"]
    assert north and all(basis.startswith("Its peak falls in the ") for basis in north)
    assert any("in 20 of 20 checkable items (100%, 95% interval 84%–100%)" in basis for basis in north)


def _adds_up(rows) -> None:
    total = next(row.seconds for row in rows if row.kind == "total")
    parts = [row for row in rows if row.kind == "adds"]
    assert sum(row.seconds for row in parts) == pytest.approx(total)
    shown = sum(float(row.value.removesuffix(" s")) for row in parts)
    assert abs(shown - float(rows[0].value.removesuffix(" s"))) <= 0.05 * len(parts) + 1e-9  # rounding only


def test_the_timing_rows_add_up_to_the_total():
    serial = {
        "total_seconds": 132.8,
        "before_shards_seconds": 118.0,
        "shards_wall_seconds": 12.3,
        "after_shards_seconds": 0.4,
        "shard_seconds": 12.2,
        "workers": 1,
        "model_load_seconds": 3.1,
        "generate_seconds": 1.5,
        "explain_seconds": 1.2,
        "faithfulness_seconds": 4.1,
        "write_seconds": 0.6,
    }
    rows = timing_rows(serial)
    _adds_up(rows)
    labels = {row.label: row.value for row in rows}
    assert labels["Total time"] == "132.8 s" and labels["Model loading"] == "3.1 s"
    assert labels["Faithfulness sample: perturbation references and checks"] == "4.1 s"
    assert labels["Rest of the shards: reading images, overlays"] == "1.8 s"  # 12.3 − 10.5 in the stages
    assert labels["Other (not attributed)"] == "2.1 s"  # 132.8 − 118.0 − 12.3 − 0.4
    assert all(row.kind != "aside" for row in rows)


def test_parallel_stage_sums_are_said_to_be_summed_over_workers():
    parallel = {
        "total_seconds": 20.0,
        "before_shards_seconds": 2.0,
        "shards_wall_seconds": 15.0,
        "after_shards_seconds": 1.0,
        "shard_seconds": 29.0,
        "workers": 2,
        "generate_seconds": 10.0,
        "explain_seconds": 16.0,
    }
    rows = timing_rows(parallel)
    _adds_up(rows)
    aside = [row.label for row in rows if row.kind == "aside"]
    assert aside == ["Answer generation (summed over 2 workers)", "Relevance maps (summed over 2 workers)"]
    assert "Shards, wall clock (2 workers in parallel)" in [row.label for row in rows]
    # a run.json of before the wall-clock parts: stage sums that fit add up, with the rest not attributed
    old = timing_rows({"total_seconds": 12.5, "explain_seconds": 8.0})
    _adds_up(old)
    assert [(row.label, row.value) for row in old][-1] == ("Other (not attributed)", "4.5 s")
    assert timing_rows({"total_seconds": 5.0, "explain_seconds": 8.0})[1].kind == "aside"


def test_the_report_shows_where_the_time_went(built_report):
    text = built_report.page.text
    assert "Where the time went Total time 12.5 s Relevance maps 8.0 s Other (not attributed) 4.5 s" in text


def test_cohort_figures_share_one_scale_per_family(built_report):
    html = built_report.index.read_text(encoding="utf-8")
    charts = re.findall(r'<svg[^>]*class="bars".*?</svg>', html, flags=re.S)
    assert len(charts) == 4 * 2  # four cohorts × two target classes
    axis_ends = {re.findall(r'class="tick">(\d+%)</text>', chart)[-1] for chart in charts}
    assert axis_ends == {"100%"}  # east's border bars set it; north's and south's lung bars alone end lower
    scales = re.findall(r"alt=\"colour scale from 0% to ([\d.]+%)\"", html)
    panels = re.findall(r"The (?:whole answer|word &#39;(\w+)&#39;)", html)
    assert len(scales) == 8
    by_target = {}
    for target, scale in zip(panels, scales, strict=True):
        by_target.setdefault(target or "answer", set()).add(scale)
    assert all(len(found) == 1 for found in by_target.values()), (
        by_target
    )  # one colour scale per target class


def test_a_cohort_background_is_the_mean_of_its_images(tmp_path):
    from auditing.report.build import cohort_background

    for name, level in (("dark.png", 40), ("light.png", 200)):
        Image.new("L", (64, 48), level).save(tmp_path / name)
    reader = ImageReader({"manifest_uri": str(tmp_path / "manifest.csv"), "config": {}})
    members = pd.DataFrame({"image_uri": ["dark.png", "light.png", "missing.png"]})
    background = cohort_background(members, reader)
    assert (background.n_images, background.n_members) == (2, 3)
    assert background.image.size == (384, 384) and background.image.getextrema() == (120, 120)
    nothing = cohort_background(members.iloc[2:], reader)
    assert nothing.image is None
    assert nothing.problem.startswith(
        f"the cohort's images could not be read ({tmp_path}/missing.png: ObjectNotFound"
    )
    studies = members.assign(n_images=[1, 9, 2])  # a volume and a pair are left out of the mean
    assert (cohort_background(studies, reader).n_images, cohort_background(studies, reader).n_members) == (
        1,
        1,
    )
    only_studies = cohort_background(studies.iloc[1:], reader)
    assert only_studies.image is None and "its items are studies" in only_studies.problem


def test_a_gallery_card_shades_the_question_words_by_their_relevance(built_report):
    html = built_report.index.read_text(encoding="utf-8")
    card = html[html.index('id="item-east-0"') :]
    card = card[: card.index('class="images"')]
    words = re.findall(r'<span class="word" data-shade="([\d.]+)"[^>]*>([^<]*)</span>', card)
    assert [word for _, word in words] == [
        "Where",
        "is",
        "the",
        "nodule?",
    ]  # pieces joined, template left out
    shades = {word: float(shade) for shade, word in words}
    assert max(shades, key=shades.get) == "nodule?" and shades["nodule?"] == 1.0  # the darkest
    assert shades["Where"] == pytest.approx(0.2 / 0.55, abs=0.01) and shades["the"] < shades["is"]
    assert "Most relevant: nodule? (67%), Where (24%), is (6%) of the question" in squash(
        parse_page(card).text
    )


@pytest.mark.parametrize(
    ("pieces", "special", "relevance", "question", "expected"),
    [
        (["<bos>", "Is", "▁it"], [True, False, False], [9, 1, 2], "Is it", [("Is", 0.5), ("it", 1.0)]),
        # a system prompt's words are not the question's
        (
            ["▁Be", "▁brief", ".", "▁Any", "▁nodule", "?"],
            [False] * 6,
            [5, 5, 0, 1, 3, 0],
            "Any nodule?",
            [("Any", 1 / 3), ("nodule?", 1.0)],
        ),
        (["Ġleft", "Ġlung"], [False, False], [-1.0, 0.5], "left lung", [("left", 0.0), ("lung", 1.0)]),
        (["a", "b"], [False], [1.0, 2.0], "ab", []),  # misaligned lengths: nothing rather than wrong words
    ],
)
def test_question_words_join_pieces_and_keep_only_the_question(
    pieces, special, relevance, question, expected
):
    from auditing.report.question import question_words

    words = question_words(pieces, special, relevance, question)
    assert [(word.text, pytest.approx(word.shade)) for word in words] == expected


def test_a_flagged_strategy_cluster_shows_its_mean_map_members_and_message(built_report):
    html = built_report.index.read_text(encoding="utf-8")
    [flag] = built_report.flags[built_report.flags["rule"] == "strategy_cluster"].itertuples()
    section = html[html.index('id="strategies"') : html.index('id="gallery"')]
    assert f'id="strategy-{flag.cohort}"' in section and "mean map of the cluster" in section
    assert "no manifest column names it" not in flag.message and "site=east (20 of 20" in flag.message
    text = squash(built_report.page.text)
    assert squash(flag.message) in text
    images = re.findall(r'src="(img/cluster-[^"]+)"', section)
    assert len(images) == 3  # the mean map and the two east items with stored overlays
    assert all((built_report.index.parent / src).is_file() for src in images)
