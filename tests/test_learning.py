"""Training from reviews: the dataset the decisions of signed-out cases make (each decision
kind, carried decisions once, split by case, refusal on too little data), a quick
fine-tune end to end through the command and through an RQ worker on the ``training``
queue, promotion and rollback with their audit events, and who may start it."""

import json
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from django.utils import timezone

from cases.models import AuditEvent, Case, CaseAssignment, Patient
from cases.registration import register_slide
from inference import learning as ai_learning
from inference.models import Finding, InferenceRun, ModelVersion, TrainingRun
from inference.registry import register_model
from inference.tools.synth import generate_slide
from review import learning, services
from review.models import Decision
from tests.conftest import run_worker_burst
from tests.test_model_registry import TinyYolo

SEEDS = (9301, 9302, 9303)
MISSED = 2  # true mitoses per slide the AI "missed": the pathologist adds them
LOOKALIKES = 4  # look-alikes per slide the AI "found": the pathologist disagrees


@pytest.fixture(scope="session")
def reviewed_slide_files(import_dir) -> list[Path]:
    """Three small synthetic slides dense with mitoses (13-27 each), made once."""
    paths = []
    for seed in SEEDS:
        path = import_dir / f"learning-{seed}.tiff"
        if not path.exists():
            generate_slide(path, seed=seed, size=(2000, 2000), mitoses_per_mm2=250.0)
        paths.append(path)
    return paths


def _ai_finding(slide, run, obj: dict, phase: str, score: float) -> Finding:
    x0, y0, x1, y1 = obj["box"]
    return Finding.objects.create(
        slide=slide,
        run=run,
        x=obj["x"],
        y=obj["y"],
        box_x0=x0,
        box_y0=y0,
        box_x1=x1,
        box_y1=y1,
        score=score,
        phase=phase,
        phase_probs={phase: score},
    )


def reviewed_case(accession, path, reviewer, detector, classifier, *, agree=None, sign=True):
    """A case whose slide a perfect reader reviewed through review.services: agrees with
    the AI's true findings (correcting the phase: the AI calls every one metaphase),
    disagrees with its look-alikes, adds the mitoses it missed, is uncertain about one
    more look-alike, leaves a low-score finding undecided, and signs out."""
    patient = Patient.objects.create(external_ref=f"P-{accession}")
    case = Case.objects.create(accession=accession, patient=patient, tumour_type="canine_mct")
    CaseAssignment.objects.create(case=case, pathologist=reviewer)
    slide = register_slide(path, case, path.name)
    run = InferenceRun.objects.create(
        slide=slide,
        detector=detector,
        classifier=classifier,
        status="succeeded",
        progress=100,
        finished_at=timezone.now(),
    )
    truth = json.loads(path.with_suffix(".json").read_text())
    found, missed = truth["mitoses"][:-MISSED], truth["mitoses"][-MISSED:]
    for mitosis in found[:agree]:
        finding = _ai_finding(slide, run, mitosis, "metaphase", 0.9)
        services.decide(finding, reviewer, "agree", corrected_phase=mitosis["phase"])
    negatives = truth["hard_negatives"]
    for lookalike in negatives[:LOOKALIKES]:
        finding = _ai_finding(slide, run, lookalike, "metaphase", 0.6)
        services.decide(finding, reviewer, "disagree", reason="lookalike")
    unsure = _ai_finding(slide, run, negatives[LOOKALIKES], "prophase", 0.55)
    services.decide(unsure, reviewer, "uncertain")
    _ai_finding(slide, run, negatives[LOOKALIKES + 1], "non_mitotic", 0.3)  # undecided
    for mitosis in missed:
        services.add_finding(slide, reviewer, mitosis["x"], mitosis["y"], mitosis["phase"])
    if sign:
        services.sign_out(case, reviewer, final_count=len(truth["mitoses"]), final_grade="high")
    return case, slide, truth


@pytest.fixture
def three_reviewed_cases(reviewed_slide_files, pathologist, shipped_models):
    detector, classifier = shipped_models["detector"], shipped_models["phase_classifier"]
    return [
        reviewed_case(f"L-{i}", path, pathologist, detector, classifier)
        for i, path in enumerate(reviewed_slide_files)
    ]


# --------------------------------------------------------------------------- the dataset


@pytest.mark.django_db
def test_each_decision_kind_gives_its_label_and_a_carried_decision_counts_once(
    reviewed_slide_files, pathologist, model_versions
):
    case, slide, truth = reviewed_case(
        "L-0", reviewed_slide_files[0], pathologist, *model_versions, sign=False
    )
    labels = learning.slide_labels(slide)
    kinds = {}
    for point in labels["points"]:
        kinds.setdefault(point["kind"], []).append(point)
    mitoses = truth["mitoses"]
    assert len(kinds["agree"]) == len(mitoses) - MISSED
    assert [p["phase"] for p in kinds["agree"]] == [m["phase"] for m in mitoses[:-MISSED]]
    assert len(kinds["disagree"]) == LOOKALIKES
    assert {p["phase"] for p in kinds["disagree"]} == {"non_mitotic"}
    assert [(p["x"], p["y"], p["phase"]) for p in kinds["added"]] == [
        (m["x"], m["y"], m["phase"]) for m in mitoses[-MISSED:]
    ]
    assert set(kinds) == {"agree", "disagree", "added"}  # uncertain and undecided: nothing
    assert len(labels["findings"]) == Finding.objects.filter(slide=slide).count()

    # A second run finds the first agreed mitosis again; its decision is carried to it.
    first = Finding.objects.filter(slide=slide, source="ai").order_by("id").first()
    decision = Decision.objects.get(finding=first)
    again = InferenceRun.objects.create(
        slide=slide,
        detector=model_versions[0],
        classifier=model_versions[1],
        status="succeeded",
        finished_at=timezone.now(),
    )
    copy = Finding.objects.create(
        slide=slide,
        run=again,
        x=first.x + 1,
        y=first.y,
        box_x0=first.box_x0,
        box_y0=first.box_y0,
        box_x1=first.box_x1,
        box_y1=first.box_y1,
        score=0.95,
        phase="metaphase",
    )
    Decision.objects.create(
        finding=copy,
        reviewer=pathologist,
        verdict="agree",
        corrected_phase=decision.corrected_phase,
        carried_from=decision,
    )
    relabelled = learning.slide_labels(slide)
    assert len(relabelled["points"]) == len(labels["points"])
    assert copy.pk in {p["finding"] for p in relabelled["points"]}
    assert first.pk not in {p["finding"] for p in relabelled["points"]}

    # A pathologist-added mitosis that a later decision disagrees with is a hard negative.
    added = Finding.objects.filter(slide=slide, source="pathologist").first()
    services.decide(added, pathologist, "disagree")
    point = next(p for p in learning.slide_labels(slide)["points"] if p["finding"] == added.pk)
    assert (point["phase"], point["kind"]) == ("non_mitotic", "disagree")


@pytest.mark.django_db
def test_only_signed_out_cases_split_by_case(
    three_reviewed_cases, reviewed_slide_files, pathologist, shipped_models
):
    open_case, _, _ = reviewed_case(
        "L-open",
        reviewed_slide_files[0],
        pathologist,
        shipped_models["detector"],
        shipped_models["phase_classifier"],
        sign=False,
    )
    dataset = learning.build_dataset(holdout_fraction=0.3)
    train, held = dataset["cases"]["train"], dataset["cases"]["holdout"]
    assert len(held) == 1 and len(train) == 2
    assert set(train) | set(held) == {"L-0", "L-1", "L-2"}  # the open case is left out
    assert not set(train) & set(held)
    assert {s["case"] for s in dataset["train"]} == set(train)
    assert {s["case"] for s in dataset["holdout"]} == set(held)
    assert dataset["counts"]["train"]["kind:added"] == 2 * MISSED
    assert dataset["counts"]["train"]["hard_negatives"] == 2 * LOOKALIKES
    assert learning.build_dataset(holdout_fraction=0.3)["cases"] == dataset["cases"]  # seeded

    with pytest.raises(learning.TrainingRefused, match="not signed out: L-open"):
        learning.build_dataset(["L-0", "L-open"])
    with pytest.raises(learning.TrainingRefused, match="No case with accession NOPE"):
        learning.build_dataset(["L-0", "NOPE"])
    with pytest.raises(learning.TrainingRefused, match="between 0 and 1"):
        learning.build_dataset(holdout_fraction=1.0)
    assert open_case.status != Case.Status.SIGNED_OUT


@pytest.mark.django_db
def test_too_little_data_is_refused_saying_how_much_is_needed(
    reviewed_slide_files, pathologist, shipped_models
):
    models = shipped_models["detector"], shipped_models["phase_classifier"]
    reviewed_case("L-0", reviewed_slide_files[0], pathologist, *models, agree=1)
    with pytest.raises(CommandError, match="at least 2 signed-out cases .* there are 1"):
        call_command("train_from_reviews", "--sync")
    reviewed_case("L-1", reviewed_slide_files[1], pathologist, *models, agree=1)
    with pytest.raises(learning.NotEnoughData, match="at least 10 confirmed mitoses") as refusal:
        learning.build_dataset()
    assert "has 3 in 1 training case(s)" in str(refusal.value)
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_only_native_models_are_fine_tuned(three_reviewed_cases, tmp_path):
    weights = tmp_path / "yolo.torchscript"
    torch.jit.script(TinyYolo()).save(str(weights))
    register_model(
        weights,
        name="lab-yolo",
        version="7",
        task="detector",
        fmt="yolo-torchscript",
        spec={"class_names": ["mitotic_figure"], "patch_px": 320},
        activate=True,
    )
    with pytest.raises(ai_learning.TrainingRefused, match="only MitoLens native models"):
        learning.start_from_reviews(enqueue_job=False)
    assert not TrainingRun.objects.exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.django_db
def test_quick_fine_tune_through_the_command_then_promotion_and_rollback(
    three_reviewed_cases, shipped_models, capsys, client_for, lab_admin
):
    call_command("train_from_reviews", "--sync", "--json", "--quick")
    out = json.loads(capsys.readouterr().out)
    run = TrainingRun.objects.get(pk=out["training_run"])
    assert run.status == TrainingRun.Status.SUCCEEDED and run.progress == 100
    assert {c["task"] for c in out["candidates"]} == {"detector", "phase_classifier"}
    for key in ("active", "candidate"):
        metrics = out["metrics"][key]
        assert 0 <= metrics["f1"] <= 1 and 0 <= metrics["phase_accuracy"] <= 1
        assert metrics["tp"] + metrics["fn"] == out["counts"]["holdout"]["mitoses"]
    candidates = [ModelVersion.objects.get(**c) for c in out["candidates"]]
    base = [shipped_models["detector"], shipped_models["phase_classifier"]]
    for version, before in zip(candidates, base, strict=True):
        assert not version.is_active and version.path.exists()
        assert version.name == before.name and version.version == f"{before.version}-lab{run.pk}"
        card = json.loads(version.training_note)
        assert card["fine_tuned_from"] == str(before)
        assert set(card["cases"]["train"]) | set(card["cases"]["holdout"]) == {"L-0", "L-1", "L-2"}
        assert card["labels"]["train"]["mitoses"] == out["counts"]["train"]["mitoses"]
        assert card["settings"]["detector"]["epochs"] == 1
        assert set(card["holdout_metrics"]) == {"active", "candidate"}
        assert version.metrics["holdout"] == out["metrics"]
        state = torch.load(version.path, weights_only=True)["state_dict"]
        assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    tail = actions[actions.index("training_start") :]
    assert tail == ["training_start", "model_registered", "model_registered", "training_finish"]

    # Promotion by command, rollback by the admin action: both audited.
    detector, classifier = candidates
    call_command("activate_model", detector.name, detector.version)
    call_command("activate_model", classifier.name, classifier.version)
    assert set(ModelVersion.objects.filter(is_active=True, task__in=["detector",
               "phase_classifier"])) == set(candidates)  # fmt: skip
    response = client_for(lab_admin).post(
        "/admin/inference/modelversion/",
        {"action": "make_active", "_selected_action": [base[0].pk]},
    )
    assert response.status_code == 302
    assert ModelVersion.objects.get(task="detector", is_active=True) == base[0]
    activated = AuditEvent.objects.filter(action="model_activated").order_by("id")
    assert [e.details["active"] for e in activated] == [
        str(detector),
        str(classifier),
        str(base[0]),
    ]
    assert activated.last().details["replaced"] == str(detector)
    assert activated.last().actor == lab_admin


@pytest.mark.django_db(transaction=True)
def test_the_button_queues_training_that_a_worker_runs_then_promote_and_roll_back(
    three_reviewed_cases, shipped_models, client_for, lab_admin, rq_queues
):
    client = client_for(lab_admin)
    page = client.post("/training/", {"holdout_fraction": "0.3", "quick": "on"})
    assert page.status_code == 302
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.QUEUED and run.created_by == lab_admin
    assert rq_queues.get_queue("training").count == 1
    listing = client.get("/training/").content.decode()
    assert "waiting for a worker" in listing and "Cancel" in listing

    run_worker_burst("training")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    listing = client.get("/training/").content.decode()
    assert str(run.candidate_detector) in listing and "Promote" in listing
    assert f"{run.result['metrics']['candidate']['f1']:.3f}" in listing

    client.post(f"/training/{run.pk}/activate/", {"which": "candidate"})
    active = set(ModelVersion.objects.filter(is_active=True).exclude(task="mil"))
    assert active == {run.candidate_detector, run.candidate_classifier}
    client.post(f"/training/{run.pk}/activate/", {"which": "base"})
    active = set(ModelVersion.objects.filter(is_active=True).exclude(task="mil"))
    assert active == {run.base_detector, run.base_classifier}
    events = AuditEvent.objects.filter(action="model_activated").order_by("id")
    assert [(e.details["active"], e.actor) for e in events] == [
        (str(run.candidate_detector), lab_admin),
        (str(run.candidate_classifier), lab_admin),
        (str(run.base_detector), lab_admin),
        (str(run.base_classifier), lab_admin),
    ]


# --------------------------------------------------------------------------- the page


@pytest.mark.django_db
def test_a_pathologist_cannot_see_or_start_training(three_reviewed_cases, client_for, pathologist):
    client = client_for(pathologist)
    page = client.get("/training/")
    assert page.status_code == 403 and "Only lab admins" in page.content.decode()
    page = client.post("/training/", {"holdout_fraction": "0.3", "quick": "on"})
    assert page.status_code == 403 and "Only lab admins" in page.content.decode()
    assert not TrainingRun.objects.exists()
    assert "/training/" not in client.get("/").content.decode()


@pytest.mark.django_db
def test_the_page_shows_a_refusal_with_its_reason(client_for, lab_admin):
    page = client_for(lab_admin).post("/training/", {"holdout_fraction": "0.3"})
    assert page.status_code == 400
    assert "at least 2 signed-out cases" in page.content.decode()
    page = client_for(lab_admin).post("/training/", {"holdout_fraction": "2"})
    assert page.status_code == 400 and not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_a_queued_training_run_can_be_cancelled_and_is_then_skipped(
    three_reviewed_cases, client_for, lab_admin, rq_queues
):
    run = learning.start_from_reviews(lab_admin, quick=True)
    page = client_for(lab_admin).post(f"/training/{run.pk}/cancel/")
    assert page.status_code == 302
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    assert AuditEvent.objects.filter(action="training_cancel", actor=lab_admin).exists()
    assert ai_learning.execute_training(run.pk) == {"skipped": "cancelled"}
    with pytest.raises(CommandError, match="at least 2 signed-out cases"):
        call_command("train_from_reviews", "--cases", "L-0")


@pytest.mark.django_db
def test_cancelling_a_running_training_stops_it_at_its_next_progress_report(
    three_reviewed_cases, lab_admin
):
    run = learning.start_from_reviews(lab_admin, quick=True, enqueue_job=False)
    stages = []

    def cancel_once_started(stage, percent):
        stages.append(stage)
        ai_learning.cancel_training(TrainingRun.objects.get(pk=run.pk), lab_admin)

    assert ai_learning.execute_training(run.pk, echo=cancel_once_started) == {"cancelled": True}
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and stages == ["data"]
    assert run.candidate_detector is None
    assert not ModelVersion.objects.filter(version__contains="-lab").exists()


def test_the_training_queue_has_its_workers():
    import yaml
    from django.conf import settings

    from portal.management.commands.serve_demo import WORKERS

    assert "training" in settings.RQ_QUEUES
    assert ["training"] in WORKERS.values()
    compose = yaml.safe_load((Path(settings.BASE_DIR) / "docker-compose.yml").read_text())
    assert "training" in compose["services"]["worker-training"]["command"]


def test_replay_slides_come_from_the_shipped_recipe_for_its_descendants_only(
    shipped_models, settings, tmp_path
):
    settings.VAR_DIR = tmp_path
    detector = shipped_models["detector"]
    paths = ai_learning.replay_slides(detector, 1)
    assert [path.name for path in paths] == ["synth-1001-6000x6000-0.25.tiff"]
    truth = json.loads(paths[0].with_suffix(".json").read_text())
    assert truth["seed"] == 1001 and truth["params"]["mitoses_per_mm2"] == 100.0  # the recipe's
    candidate = ModelVersion(name=detector.name, version="1.0-lab7", task="detector")
    assert ai_learning.replay_slides(candidate, 1) == paths  # made once, then reused
    lab_model = ModelVersion(name="lab-detector", version="2", task="detector")
    assert ai_learning.replay_slides(lab_model, 2) == []  # its training data is not here
    assert ai_learning.replay_slides(detector, 0) == []


def test_rehearsal_slides_add_every_object_they_hold(reviewed_slide_files):
    from inference.engine.model_io import ModelSpec
    from inference.tools.finetune import Dataset, FinetuneSettings, gather_examples

    models = Path(__file__).resolve().parent.parent / "models"
    specs = [
        ModelSpec.from_dict(json.loads((models / f"mitolens-{name}.json").read_text())["spec"])
        for name in ("detector-1.0", "phase-1.1")
    ]
    replay = reviewed_slide_files[0]
    truth = json.loads(replay.with_suffix(".json").read_text())
    objects = len(truth["mitoses"]) + len(truth["hard_negatives"])
    detector, classifier = gather_examples(
        Dataset(train=[], holdout=[]), *specs, FinetuneSettings(), replay=[replay]
    )
    assert len(detector) == objects + 24  # a patch on each object, 24 on random tissue
    boxes = torch.cat(detector.labels)
    assert int((boxes == 0).sum()) >= len(truth["mitoses"])  # mitoses, each at least once
    phases = [kind for kind in classifier.kinds if kind in ("prophase", "metaphase")]
    assert len(phases) == sum(m["phase"] in ("prophase", "metaphase") for m in truth["mitoses"])
