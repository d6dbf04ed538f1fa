"""`chestxray catalog nih|folder|csv`, `chestxray explore` and `chestxray synth` (area A)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from chestxray.cli import app
from chestxray.cli.common import console, err_console, friendly, print_table
from chestxray.errors import ConfigError

catalog_app = typer.Typer(help="Build a catalog (one row an image: path, patient, labels, split) from a collection."
                          "\n\nExample: chestxray catalog folder data/chest_xray --out runs/catalog",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

SPLIT_HELP = ("Split ratios train,val,test, by patient: each patient's split follows from its id and --seed "
              "(balanced by image count), whatever the labels.")
MISSING_PATIENT_HELP = ("Rows with an empty patient id: error (default, names the rows), own (each image its own "
                        "patient), drop (leave them out). The choice and count are reported.")
TASK_HELP = ("auto | multilabel | binary | multiclass. multiclass: classes exclude each other (softmax, "
             "cross-entropy, argmax; normal is a class); auto: binary for one label (or NORMAL + one folder), "
             "class folders otherwise multiclass, CSV findings multilabel.")


def _ratios(text: str) -> tuple[float, ...]:
    """Parse and check '0.7,0.1,0.2' before any data is read, with a ConfigError naming the option."""
    from chestxray.data.split import check_ratios

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--ratios {text!r}: expected three numbers like 0.7,0.1,0.2") from None
    return check_ratios(values)


def _finish(catalog, out: Path, ratios: tuple[float, ...], seed: int) -> None:
    """Split by patient, save (with missing_images.csv when rows lack an image) and print the summary line."""
    from chestxray.data.sources import write_catalog
    from chestxray.data.identity import normalisation_notes
    from chestxray.data.split import assign_splits

    catalog = assign_splits(catalog, ratios, seed)
    missing = list(catalog.info.get("missing_images") or [])
    write_catalog(catalog, out)
    if missing:
        err_console.print(f"[yellow]warning:[/] {len(missing)} row(s) without an image file were left out; "
                          f"full list in {out / 'missing_images.csv'}", highlight=False, soft_wrap=True)
    split = catalog.info["split"]
    per_split = " / ".join(f"{s} {split['images'][s]}" for s in ("train", "val", "test"))
    console.print(f"catalog {out}: {len(catalog.table)} images, {catalog.table['patient_id'].nunique()} patients, "
                  f"{len(catalog.labels)} label(s) ({catalog.task}); images {per_split}; "
                  f"{len(missing)} missing{_missing_patients(catalog.info)}{normalisation_notes(catalog.info)}",
                  highlight=False, soft_wrap=True)


def _missing_patients(info: dict) -> str:
    """'; 3 without a patient id (own patient each)' when --missing-patient own|drop applied to some rows."""
    report = info.get("missing_patient") or {}
    if not report.get("rows"):
        return ""
    what = "each its own patient" if report["policy"] == "own" else "left out"
    return f"; {report['rows']} without a patient id ({what}, --missing-patient {report['policy']})"


@catalog_app.command("nih", help="Catalog NIH ChestX-ray14 from Data_Entry_2017.csv or Data_Entry_2017_v2020.csv "
                     "(plain or .gz); images are found by file name anywhere under --images (nested images_001/images/ "
                     "or flat). Rows without an image are reported and listed in missing_images.csv."
                     "\n\nExample: chestxray catalog nih --csv Data_Entry_2017.csv --images data/nih --out runs/catalog"
                     "\n\nExample (no images, for planning): chestxray catalog nih --csv Data_Entry_2017_v2020.csv.gz "
                     "--metadata-only --out runs/nih-meta")
@friendly
def catalog_nih(
    csv: Path = typer.Option(..., "--csv", help="NIH label table (Data_Entry_2017\\[_v2020].csv\\[.gz])."),
    out: Path = typer.Option(..., "--out", "-o", help="Output catalog folder."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder holding the PNGs (searched recursively)."),
    metadata_only: bool = typer.Option(False, "--metadata-only", help="No images: empty paths, for splits/statistics."),
    views: Optional[str] = typer.Option(None, "--views", help="Keep only these view positions, e.g. PA,AP."),
    max_patients: Optional[int] = typer.Option(None, "--max-patients", help="Seeded random subset of N patients."),
    official_split: Optional[Path] = typer.Option(None, "--official-split",
                                                  help="Folder with train_val_list.txt and test_list.txt."),
    ratios: str = typer.Option("0.7,0.1,0.2", "--ratios", help=SPLIT_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for the patient subset and the split."),
    missing_patient: str = typer.Option("error", "--missing-patient", help=MISSING_PATIENT_HELP),
) -> None:
    from chestxray.data.sources import read_nih

    split_ratios = _ratios(ratios)
    if (images is None) != metadata_only:
        raise ConfigError("give either --images DIR or --metadata-only (not both, not neither)")
    catalog = read_nih(csv, images, views=views.split(",") if views else None, max_patients=max_patients,
                       seed=seed, official_split=official_split, missing_patient=missing_patient)
    _finish(catalog, out, split_ratios, seed)


@catalog_app.command("folder", help="Catalog class folders ROOT/CLASS/* or ROOT/train|val|test/CLASS/* "
                     "(.png/.jpg/.jpeg/.dcm). Two classes with one normal (NORMAL / No Finding / normal) give a binary "
                     "task; otherwise one column per class. A train/val/test folder split is kept (val carved from "
                     "train by patient if absent). Patient id from the file name: 'personNNN_...' -> personNNN; "
                     "'IM-NNNN-NNNN' / 'NORMAL2-IM-NNNN-NNNN' -> name without the trailing -NNNN; NIH "
                     "'NNNNNNNN_NNN' -> NNNNNNNN; otherwise one patient per image, counted and warned about (give "
                     "the rule with --patient-regex). Files that are not images are ignored and counted."
                     "\n\nExample: chestxray catalog folder data/chest_xray --out runs/catalog"
                     "\n\nExample (multi-class NORMAL / BACTERIA / VIRUS): chestxray catalog folder data/chest_xray "
                     "--kaggle-subtypes --out runs/catalog-3class")
@friendly
def catalog_folder(
    root: Path = typer.Argument(..., help="Root folder of the class folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Output catalog folder."),
    patient_regex: Optional[str] = typer.Option(None, "--patient-regex",
                                                help="Regex on the file name (no extension); group 1 = patient id, e.g. "
                                                "'^(P\\d+)_' for P123_1.png. Replaces the default rules."),
    ignore_source_split: bool = typer.Option(False, "--ignore-source-split",
                                             help="Ignore train/val/test folders and split by patient at random."),
    task: str = typer.Option("auto", "--task", help=TASK_HELP),
    kaggle_subtypes: bool = typer.Option(False, "--kaggle-subtypes", help="Classes NORMAL / BACTERIA / VIRUS from "
                                         "Kaggle pneumonia file names (person1_bacteria_1, person1_virus_6)."),
    class_regex: Optional[str] = typer.Option(None, "--class-regex", help="Regex on the file name (no extension); "
                                              "group 1 replaces the folder class where it matches."),
    ratios: str = typer.Option("0.7,0.1,0.2", "--ratios", help=SPLIT_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for the split."),
) -> None:
    from chestxray.data.sources import read_folder
    from chestxray.data.tasks import check_task

    split_ratios = _ratios(ratios)
    catalog = read_folder(root, patient_regex=patient_regex, keep_source_split=not ignore_source_split,
                          task=check_task(task), class_regex=class_regex, kaggle_subtypes=kaggle_subtypes)
    _finish(catalog, out, split_ratios, seed)


@catalog_app.command("csv", help="Catalog any collection described by a CSV: one row an image, labels as 0/1 "
                     "columns (--label-cols) or a findings column (--findings-col, each character of --sep separates "
                     "names; 'No Finding'/'normal' = none). Paths are relative to --images-root (default: the CSV's "
                     "folder). Columns named age, sex, view, location, site, source, manufacturer, race or ethnicity are kept "
                     "(--keep-cols adds others); DICOM images also get sex, age, view and manufacturer from their "
                     "headers."
                     "\n\nExample: chestxray catalog csv covid/metadata.csv --path-col image_file --patient-col "
                     "patientid --findings-col finding --sep ',/' --out runs/catalog"
                     "\n\nExample (multi-class): chestxray catalog csv covid/metadata.csv --path-col image_file "
                     "--patient-col patientid --findings-col finding --sep , --task multiclass --views PA,AP "
                     "--merge 'Bacterial=Streptococcus,Klebsiella,Legionella' --out runs/covid-classes")
@friendly
def catalog_csv(
    table: Path = typer.Argument(..., help="The CSV table."),
    out: Path = typer.Option(..., "--out", "-o", help="Output catalog folder."),
    path_col: str = typer.Option(..., "--path-col", help="Column with the image path."),
    patient_col: str = typer.Option(..., "--patient-col", help="Column with the patient id."),
    label_cols: Optional[str] = typer.Option(None, "--label-cols", help="Comma-separated 0/1 label columns."),
    findings_col: Optional[str] = typer.Option(None, "--findings-col", help="Column with separated finding names."),
    sep: str = typer.Option("|", "--sep", help="Separator character(s) for --findings-col."),
    images_root: Optional[Path] = typer.Option(None, "--images-root", help="Folder the paths are relative to."),
    task: str = typer.Option("auto", "--task", help=TASK_HELP),
    merge: Optional[list[str]] = typer.Option(None, "--merge", help="Merge finding names: NEW=old1,old2 "
                                              "(repeatable), e.g. Viral=SARS,MERS."),
    views: Optional[str] = typer.Option(None, "--views", help="Keep only rows whose 'view' column is one of "
                                        "these, e.g. PA,AP."),
    ratios: str = typer.Option("0.7,0.1,0.2", "--ratios", help=SPLIT_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for the split."),
    missing_patient: str = typer.Option("error", "--missing-patient", help=MISSING_PATIENT_HELP),
    keep_cols: Optional[str] = typer.Option(None, "--keep-cols", help="Other columns to keep in the catalog "
                                            "verbatim (e.g. for 'chestxray audit --by'), comma-separated."),
) -> None:
    from chestxray.data.sources import read_csv_table
    from chestxray.data.tasks import check_task, parse_merges

    split_ratios = _ratios(ratios)
    merges = parse_merges(merge)
    cols = [c.strip() for c in label_cols.split(",") if c.strip()] if label_cols else None
    catalog = read_csv_table(table, path_col, patient_col, label_cols=cols, findings_col=findings_col, sep=sep,
                             images_root=images_root, task=check_task(task), merges=merges,
                             views=views.split(",") if views else None, missing_patient=missing_patient,
                             keep_cols=[c.strip() for c in keep_cols.split(",") if c.strip()] if keep_cols else ())
    _finish(catalog, out, split_ratios, seed)


@catalog_app.command("chexpert", help="Catalog a CheXpert-convention table (CheXpert train.csv / valid.csv, or "
                     "MIMIC-CXR's chexpert.csv joined to image paths): 1 positive, 0 negative, -1 uncertain, blank not "
                     "mentioned. --uncertain chooses U-Ones, U-Zeros or U-Ignore (Irvin et al. 2019; ignore = "
                     "missing: skipped by the loss, metrics and thresholds), for all findings or per finding. Names "
                     "stay CheXpert's; 'catalog merge' maps them onto NIH's."
                     "\n\nExample: chestxray catalog chexpert CheXpert-v1.0-small/train.csv --images-root . "
                     "--uncertain 'ignore,Atelectasis=ones,Edema=ones' --out runs/chexpert"
                     "\n\nExample (MIMIC-CXR): chestxray catalog chexpert mimic-with-paths.csv --path-col path "
                     "--patient-col subject_id --uncertain zeros --out runs/mimic")
@friendly
def catalog_chexpert(
    table: Path = typer.Argument(..., help="The label table (CSV)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output catalog folder."),
    images_root: Optional[Path] = typer.Option(None, "--images-root", help="Folder the paths are relative to "
                                               "(default: the CSV's folder)."),
    uncertain: str = typer.Option("ignore", "--uncertain", help="ones | zeros | ignore, optionally per finding: "
                                  "'ignore,Atelectasis=ones'."),
    blank: str = typer.Option("negative", "--blank", help="A blank (not mentioned) cell: negative (Irvin et al.) or "
                              "missing (torchxrayvision)."),
    path_col: str = typer.Option("Path", "--path-col", help="Column with the image path."),
    patient_col: Optional[str] = typer.Option(None, "--patient-col", help="Column with the patient id (default: "
                                              "'patientNNNNN' in the path)."),
    label_cols: Optional[str] = typer.Option(None, "--label-cols", help="Comma-separated finding columns (default: "
                                             "the CheXpert findings present)."),
    ratios: str = typer.Option("0.7,0.1,0.2", "--ratios", help=SPLIT_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for the split."),
    missing_patient: str = typer.Option("error", "--missing-patient", help=MISSING_PATIENT_HELP),
) -> None:
    from chestxray.data.sources import read_chexpert

    split_ratios = _ratios(ratios)
    cols = [c.strip() for c in label_cols.split(",") if c.strip()] if label_cols else None
    catalog = read_chexpert(table, images_root, uncertain=uncertain, blank=blank, path_col=path_col,
                            patient_col=patient_col, label_cols=cols, missing_patient=missing_patient)
    _finish(catalog, out, split_ratios, seed)


@catalog_app.command("merge", help="Merge catalogs into one: one label vocabulary (NIH names as the base; Kaggle "
                     "PNEUMONIA -> Pneumonia; the COVID set's findings -> Pneumonia + Viral/Bacterial/Fungal Pneumonia + "
                     "organism where given; CheXpert names -> NIH's; see docs/datasets.md), a 'source' column, and a "
                     "finding a source does not annotate left MISSING (empty), never negative: training, metrics and "
                     "thresholds skip it for that source's images. Patient ids become SOURCE:id; byte-identical images "
                     "in two sources keep their patients in one split; the split is by patient, drawn within each "
                     "source. Metadata (age, sex, view, location, ...) is kept."
                     "\n\nExample: chestxray catalog merge nih=runs/nih-cat kaggle=runs/kaggle-cat covid=runs/covid-cat "
                     "--out runs/merged"
                     "\n\nExample (own label map): chestxray catalog merge a=cat-a b=cat-b --map labels.yaml --out merged")
@friendly
def catalog_merge(
    catalogs: list[str] = typer.Argument(..., help="Catalog folders, each NAME=FOLDER (or FOLDER: named after it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output catalog folder."),
    label_map: Optional[Path] = typer.Option(None, "--map", help="YAML label map changing the default (map:, "
                                             "sources: NAME: {map:, negative:}, vocabulary:, default:)."),
    ratios: str = typer.Option("0.7,0.1,0.2", "--ratios", help=SPLIT_HELP + " Drawn within each source; 0,0,1 "
                               "makes an all-test catalog for external validation."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split."),
    keep_splits: bool = typer.Option(False, "--keep-splits", help="Keep each catalog's own split instead of "
                                     "splitting the merged catalog."),
    same_patients: bool = typer.Option(False, "--same-patients", help="Equal patient ids in different sources are "
                                       "one person (sources sharing one numbering); default: ids become SOURCE:id."),
) -> None:
    from chestxray.data.labelmap import read_label_map
    from chestxray.data.merge import load_inputs, merge_catalogs
    from chestxray.data.sources import write_catalog

    split_ratios = _ratios(ratios)
    mapping = read_label_map(label_map)
    catalog = merge_catalogs(load_inputs(catalogs), mapping, split_ratios, seed, keep_splits=keep_splits,
                             same_patients=same_patients)
    write_catalog(catalog, out)
    merge, split = catalog.info["merge"], catalog.info["split"]
    for name, rec in merge["sources"].items():
        console.print(f"  {name}: {rec['images']} images, {rec['patients']} patients; annotates "
                      f"{len(rec['annotated'])} of {len(catalog.labels)} labels ({', '.join(rec['annotated'][:6])}"
                      f"{', ...' if len(rec['annotated']) > 6 else ''})"
                      + (f"; kept as they are (not in the map): {', '.join(rec['kept_as_is'])}" if rec['kept_as_is']
                         else ""), highlight=False, soft_wrap=True)
    per_split = " / ".join(f"{s} {split['images'][s]}" for s in ("train", "val", "test"))
    dup = merge["duplicates"]["count"]
    console.print(f"catalog {out}: {len(catalog.table)} images from {len(merge['sources'])} sources, "
                  f"{catalog.table['patient_id'].nunique()} patients, {len(catalog.labels)} labels (missing where a "
                  f"source does not annotate them); images {per_split} ({split['method']})"
                  + (f"; {dup} image(s) identical across sources, their patients kept together" if dup else ""),
                  highlight=False, soft_wrap=True)


@app.command(help="Explore a catalog: images and patients per finding and split, prevalence per image and per "
             "patient, co-occurrence counts (class counts for a binary task), age/sex/view summaries, a shortcut "
             "check (how well width, height, aspect ratio, file size, brightness, contrast, bit depth and view alone "
             "predict each label; warns when far from AUROC 0.5) and a stratified random grid of sample images "
             "(CSV + PNG in --out). Given a PREPARED folder and --augment POLICY, also writes a grid of augmented "
             "samples.\n\nExample: chestxray explore runs/catalog --out runs/explore")
@friendly
def explore(
    path: Path = typer.Argument(..., help="Catalog folder (or a prepared folder with manifest.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for CSV and PNG files."),
    augment: Optional[str] = typer.Option(None, "--augment", help="Augmentation policy to preview (prepared folder)."),
    samples: int = typer.Option(16, "--samples", help="Images in the sample grid."),
    seed: int = typer.Option(0, "--seed", help="Seed for the sample grid and the shortcut check."),
    geometry: Optional[int] = typer.Option(None, "--geometry", help="Also check, at this model input size (e.g. 64), "
                                           "how each --resize mode (crop, pad, stretch) carries the image's shape: "
                                           "within each class, a patient-grouped linear probe on the rendered pixels "
                                           "predicting 'wider than the median', and what crop discards "
                                           "(geometry.csv; slow: a minute per 1,000 images)."),
) -> None:
    from rich.table import Table

    from chestxray.data.explore import explore as run_explore
    from chestxray.data.shortcuts import shortcut_warnings

    if geometry is not None:
        from chestxray.cli import checks

        checks.at_least("--geometry", geometry, 8)
    result = run_explore(path, out, augment=augment, n_samples=samples, seed=seed, geometry_size=geometry)
    if not result.findings.empty:
        table = Table(title=f"images (patients) per finding; prevalence per image / patient")
        splits = [c[len("images_"):] for c in result.findings.columns if c.startswith("images_")]
        for name in ["finding", "all", *splits, "% img", "% pat"]:
            table.add_column(name, justify="left" if name == "finding" else "right", no_wrap=True)
        for finding, row in result.findings.iterrows():
            cells = [f"{int(row['images'])} ({int(row['patients'])})"]
            cells += [f"{int(row[f'images_{s}'])} ({int(row[f'patients_{s}'])})" for s in splits]
            table.add_row(str(finding), *cells, f"{row['prevalence_images']:.1%}", f"{row['prevalence_patients']:.1%}")
        print_table(table)
    if not result.shortcuts.empty:
        strongest = result.shortcuts.assign(d=(result.shortcuts["auroc"] - 0.5).abs()).sort_values("d").groupby(
            "label", sort=False).tail(1).set_index("label")
        warnings = shortcut_warnings(result.shortcuts)
        flagged = sorted(set(result.shortcuts.loc[result.shortcuts["flagged"], "label"]))
        console.print(f"shortcut check ({len(result.shortcuts)} label-feature AUROCs in {out / 'shortcuts.csv'}): "
                      f"{len(flagged)} of {len(strongest)} label(s) predictable from acquisition features alone"
                      + (f" ({', '.join(flagged)})" if flagged else "; strongest feature per label within noise of 0.5"),
                      highlight=False, soft_wrap=True)
        for line in warnings:
            err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    if not result.sources.empty:
        from chestxray.data.source_mix import source_warnings

        console.print(f"sources: positives and annotated images per finding and source in {out / 'sources.csv'}",
                      highlight=False, soft_wrap=True)
        for line in source_warnings(result.sources):
            err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    if result.geometry is not None and len(result.geometry):
        g = result.geometry
        leak = ", ".join(f"{m} {part['wider_auroc'].min():.2f}-{part['wider_auroc'].max():.2f}"
                         for m, part in g.groupby("geometry", sort=False))
        console.print(f"geometry ({out / 'geometry.csv'}): within a class, 'wider than the median' is told from the "
                      f"{geometry} px input with AUROC {leak} (0.5 = shape invisible); crop discards up to "
                      f"{g['discarded_max'].max():.0%} of the long side (median {g['discarded_median'].median():.0%})",
                      highlight=False, soft_wrap=True)
    if result.augment_grid is not None:
        console.print(f"augmentation grid: {result.augment_grid}", highlight=False)
    skipped = f" ({result.samples_skipped} unreadable skipped)" if result.samples_skipped else ""
    console.print(f"explore {out}: {len(result.files)} files written; {result.samples_shown} sample images "
                  f"(stratified by finding, seed {seed}){skipped}", highlight=False, soft_wrap=True)


@app.command(help="Write a SYNTHETIC chest-X-ray-like dataset in NIH layout (labels.csv, images/*.png, boxes.csv, "
             "README.txt) with strong findings at known places (Nodule, Effusion, Cardiomegaly, Pneumothorax), "
             "for tests and demos.\n\nExample: chestxray synth --out runs/synth --n 200 --size 128")
@friendly
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    n: int = typer.Option(200, "--n", help="Number of images."),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    from chestxray.data.synth import make_synthetic

    folder = make_synthetic(out, n=n, size=size, seed=seed)
    console.print(f"synth {folder}: {n} synthetic {size}x{size} images; catalog them with 'chestxray catalog nih "
                  f"--csv {folder / 'labels.csv'} --images {folder / 'images'} --out CATALOG'", highlight=False,
                  soft_wrap=True)
