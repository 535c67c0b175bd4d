"""Engine workers load the active models once, before they fork a work horse per job."""

from inference import registry
from inference.models import ModelVersion
from inference.registry import activate, loaded_version, register_model
from portal.workers import preload


def test_an_engine_worker_loads_the_active_models_before_its_jobs(shipped_models):
    preload(["inference"])
    active = ModelVersion.objects.filter(is_active=True)
    assert {v.task for v in active} == {"detector", "phase_classifier", "mil"}
    for version in active:  # the same objects a job's work horse inherits
        assert loaded_version(version) is loaded_version(version)
        assert loaded_version(version) is not None


def test_a_newly_activated_version_is_loaded_at_the_next_preload(shipped_models, tmp_path):
    classifier = ModelVersion.objects.get(task="phase_classifier", is_active=True)
    copy = register_model(
        classifier.path,
        name="lab-phase",
        version="2.0",
        task="phase_classifier",
        fmt=classifier.format,
        spec=classifier.spec,
    )
    preload(["explain"])
    before = loaded_version(classifier)
    activate(copy)
    preload(["explain"])  # as a worker's maintenance tick does
    loads = registry._loaded.cache_info().misses
    assert loaded_version(copy) is not before  # its own entry, keyed by version and weights
    assert loaded_version(classifier) is before
    assert registry._loaded.cache_info().misses == loads  # nothing loaded after the tick
