"""The demo data set: bundled phantom cases written as PNGs plus a CSV manifest with cohort columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from phantom.cases import sample

DEMO_COLUMNS = ("item_id", "image", "question", "roi_box", "site", "marker", "finding", "expected_answer")
DEMO_GROUPINGS = ["site"]  # what an auditor knows; `marker` is the ground truth the demo checks against


def write_demo_dataset(folder: str | Path, n: int = 24, seed: int = 0) -> Path:
    """Write `n` phantom presence cases ("Is there a nodule?") as PNGs and `manifest.csv`.

    The cohort is mixed on purpose: half the images carry a burned-in corner tag (`marker`, as one
    site's equipment might stamp its images, `site` "north"), and the nodule is present in half,
    independently. An honest model answers from the lungs; a model that learned the tag answers
    "yes" wherever the tag is. `roi_box` is the nodule's box when there is one.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(sample(n, seed, tasks=("presence",), marker_prob=0.5, finding_prob=0.5)):
        item_id = f"phantom-{seed:03d}-{index:04d}"
        image = f"images/{item_id}.png"
        case.image.save(folder / image, format="PNG")
        rows.append(
            {
                "item_id": item_id,
                "image": image,
                "question": case.question,
                "roi_box": ",".join(str(v) for v in case.lesion_box) if case.lesion_box else "",
                "site": "north" if case.marker else "south",
                "marker": "yes" if case.marker else "no",
                "finding": "yes" if case.lesion_box else "no",
                "expected_answer": case.answer,
            }
        )
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DEMO_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


STUDY_COLUMNS = ("item_id", "image", "image_labels", "question", "site", "finding", "expected_answer")


def _series_files(case, spacing_mm: float = 5.0) -> list[tuple[str, bytes]]:
    """A volume case as an MR DICOM series, one file per slice: stored values are the phantom's grey
    levels, positions rise along the slice normal with the slice number, so the pipeline's order
    (along the normal) and labels ("slice k of n") are the phantom's own. MR with its display window
    stated (0..256, as the phantom's own 8-bit greys) rather than CT, whose three Hounsfield windows
    would colour the greys the model was trained on."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    series, study = generate_uid(), generate_uid()
    files = []
    for k, image in enumerate(case.images):
        pixels = np.asarray(image.convert("L"), dtype=np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", study, series
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing_mm]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], spacing_mm
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append((f"slice-{k + 1:03d}.dcm", buffer.getvalue()))
    return files


def write_study_datasets(folder: str | Path, n: int = 8, seed: int = 0) -> dict[str, Path]:
    """Write `n` phantom volumes (DICOM series folders) and `n` prior/current pairs (PNGs) with a
    manifest each: {"volume": manifest, "longitudinal": manifest}.

    Volumes ask "Is there a nodule?" or "In which part of the volume is the nodule?"; pairs ask "Has
    the nodule grown since the prior?". `site` splits each set in two cohorts; `finding` is the
    truth (the nodule's slices, or "grown"/"stable"), for checking the audit against.
    """
    from phantom.studies import sample_studies

    folder = Path(folder)
    manifests = {}
    for kind in ("volume", "longitudinal"):
        rows = []
        for index, case in enumerate(sample_studies(n, seed, kind=kind)):
            item_id = f"{kind}-{seed:03d}-{index:04d}"
            if kind == "volume":
                series = folder / "volumes" / item_id
                series.mkdir(parents=True, exist_ok=True)
                for name, data in _series_files(case):
                    (series / name).write_bytes(data)
                image, labels = f"volumes/{item_id}/", ""
                finding = ",".join(str(k + 1) for k in case.nodule_images) or "none"
            else:
                names = []
                for label, picture in zip(case.image_labels, case.images, strict=True):
                    name = f"pairs/{item_id}-{label}.png"
                    (folder / "pairs").mkdir(parents=True, exist_ok=True)
                    picture.save(folder / name, format="PNG")
                    names.append(name)
                image, labels = json.dumps(names), json.dumps(case.image_labels)
                finding = "grown" if case.answer == "yes" else "stable"
            rows.append(
                {
                    "item_id": item_id,
                    "image": image,
                    "image_labels": labels,
                    "question": case.question,
                    "site": "north" if index % 2 else "south",
                    "finding": finding,
                    "expected_answer": case.answer,
                }
            )
        manifest = folder / f"{kind}.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=STUDY_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        manifests[kind] = manifest
    return manifests
