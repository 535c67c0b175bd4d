"""The machine side: registered model versions, inference runs and their findings."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class ModelVersion(models.Model):
    class Task(models.TextChoices):
        DETECTOR = "detector", "Mitotic-figure detector"
        PHASE_CLASSIFIER = "phase_classifier", "Phase classifier"
        MIL = "mil", "Attention MIL"

    class Format(models.TextChoices):
        NATIVE = "native", "MitoLens native (state dict + spec)"
        TORCHSCRIPT = "torchscript", "TorchScript"
        YOLO_TORCHSCRIPT = "yolo-torchscript", "YOLOv7-style TorchScript"

    name = models.CharField(max_length=100)
    version = models.CharField(max_length=40)
    task = models.CharField(max_length=20, choices=Task.choices)
    format = models.CharField(max_length=20, choices=Format.choices, default=Format.NATIVE)
    weights = models.CharField(max_length=500, help_text="Path relative to the model store")
    sha256 = models.CharField(max_length=64)
    spec = models.JSONField(
        default=dict, help_text="Input spec: patch px, target µm/px, mean/std, class names, …"
    )
    metrics = models.JSONField(default=dict, blank=True)
    training_note = models.TextField(blank=True)
    domain = models.JSONField(
        default=dict,
        blank=True,
        help_text="Description of the data it was trained on, for the out-of-domain guard "
        "(empty: runs with it are 'unknown'); see inference/engine/domain.py",
    )
    is_active = models.BooleanField(default=False)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="unique_model_version"),
            models.UniqueConstraint(
                fields=["task"], condition=Q(is_active=True), name="one_active_model_per_task"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def path(self):
        return settings.MODEL_STORE / self.weights


class InferenceRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    class Domain(models.TextChoices):
        IN_DOMAIN = "in_domain", "In domain"
        OUT_OF_DOMAIN = "out_of_domain", "Out of domain"
        UNKNOWN = "unknown", "Unknown"

    slide = models.ForeignKey("cases.Slide", on_delete=models.PROTECT, related_name="runs")
    detector = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    classifier = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    model_hashes = models.JSONField(default=dict, help_text="sha256 of each model file used")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    stage = models.CharField(max_length=40, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    device = models.CharField(max_length=32, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    timings = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    domain_status = models.CharField(
        max_length=16,
        choices=Domain.choices,
        default=Domain.UNKNOWN,
        help_text="Whether the slide's tissue lies within the detector's training data",
    )
    domain_distance = models.FloatField(
        null=True, blank=True, help_text="The slide's distance from the training data"
    )
    domain_threshold = models.FloatField(
        null=True, blank=True, help_text="Beyond this distance the slide is out of domain"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["slide", "status", "-created_at"])]

    def __str__(self) -> str:
        return f"Run {self.pk} on slide {self.slide_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def out_of_domain(self) -> bool:
        return self.domain_status == self.Domain.OUT_OF_DOMAIN


class Finding(models.Model):
    class Source(models.TextChoices):
        AI = "ai", "AI"
        PATHOLOGIST = "pathologist", "Pathologist"

    class Phase(models.TextChoices):
        PROPHASE = "prophase", "Prophase"
        METAPHASE = "metaphase", "Metaphase"
        ANAPHASE = "anaphase", "Anaphase"
        TELOPHASE = "telophase", "Telophase"
        NON_MITOTIC = "non_mitotic", "Non-mitotic look-alike"

    slide = models.ForeignKey("cases.Slide", on_delete=models.PROTECT, related_name="findings")
    run = models.ForeignKey(
        InferenceRun, on_delete=models.PROTECT, null=True, blank=True, related_name="findings"
    )
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.AI)
    x = models.FloatField(help_text="Centroid, level-0 px")
    y = models.FloatField(help_text="Centroid, level-0 px")
    box_x0 = models.FloatField()
    box_y0 = models.FloatField()
    box_x1 = models.FloatField()
    box_y1 = models.FloatField()
    score = models.FloatField(null=True, blank=True)
    phase = models.CharField(max_length=12, choices=Phase.choices)
    phase_probs = models.JSONField(default=dict, blank=True)
    kept = models.BooleanField(
        default=False,
        help_text="A decided finding of an earlier run that the latest run did not find again:"
        " still shown, as 'from run N'",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-score", "id"]
        indexes = [models.Index(fields=["slide", "run"]), models.Index(fields=["run", "-score"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(source="pathologist", run__isnull=True)
                | Q(source="ai", run__isnull=False),
                name="ai_findings_have_a_run",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.phase} at ({self.x:.0f}, {self.y:.0f})"


class HpfMap(models.Model):
    """Mitotic count per 10 HPF over a slide, from one run: AI findings, or reviewed ones.

    ``counts`` and ``tissue`` are row-major grids of the windows centred on each cell
    of side ``step_px`` (level-0 px); see inference.engine.hpf.
    """

    class Basis(models.TextChoices):
        AI = "ai", "AI findings"
        REVIEWED = "reviewed", "Reviewed findings"

    run = models.ForeignKey(InferenceRun, on_delete=models.CASCADE, related_name="hpf_maps")
    basis = models.CharField(max_length=10, choices=Basis.choices)
    counts = models.JSONField(help_text="Count per 10 HPF of the window centred on each cell")
    tissue = models.JSONField(help_text="Tissue fraction of each window")
    step_px = models.FloatField()
    window_w_px = models.FloatField()
    window_h_px = models.FloatField()
    hpf_area_mm2 = models.FloatField()
    mpp = models.FloatField("µm/px used")
    min_tissue = models.FloatField()
    hotspot_x = models.FloatField()
    hotspot_y = models.FloatField()
    hotspot_count = models.PositiveIntegerField()
    tissue_rule_relaxed = models.BooleanField(default=False)
    findings_counted = models.PositiveIntegerField()
    inputs_digest = models.CharField(
        max_length=32, blank=True, help_text="Fingerprint of the points and map it was made from"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "basis"], name="one_hpf_map_per_run_and_basis")
        ]

    def __str__(self) -> str:
        return f"{self.get_basis_display()} HPF map of run {self.run_id}"

    @property
    def area_mm2(self) -> float:
        return 10 * self.hpf_area_mm2


class Explanation(models.Model):
    """One attribution map of one finding's crop, cached per (finding, method, target,
    classifier version). The map is float16, row-major, ``height`` x ``width``."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="explanations")
    method = models.CharField(max_length=24)
    target = models.CharField(max_length=12, help_text="The phase class explained")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    parameters = models.JSONField(default=dict)
    values = models.BinaryField()
    width = models.PositiveSmallIntegerField()
    height = models.PositiveSmallIntegerField()
    value_min = models.FloatField()
    value_max = models.FloatField()
    quality = models.JSONField(default=dict, help_text="IG convergence delta, deletion AUC, …")
    crop_x = models.FloatField(help_text="Crop origin, level-0 px")
    crop_y = models.FloatField()
    crop_mpp = models.FloatField()
    compute_ms = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["finding", "method", "target", "model_version"],
                name="one_explanation_per_finding_method_target_model",
            )
        ]

    def __str__(self) -> str:
        return f"{self.method} of finding {self.finding_id} ({self.target})"


class MilMap(models.Model):
    """Attention-MIL over a run's slide: per 512 µm region a tumour probability, per
    64 µm patch its attention (1 = a uniform share within its region)."""

    run = models.OneToOneField(InferenceRun, on_delete=models.CASCADE, related_name="mil_map")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    bag_px = models.FloatField(help_text="Region side in level-0 px")
    probability = models.JSONField(help_text="Tumour probability per region (rows of columns)")
    attention = models.JSONField(help_text="Attention per patch, 8 x 8 patches per region")
    on_tissue = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"MIL map of run {self.run_id}"


class TrainingRun(models.Model):
    """Fine-tuning the active detector and phase classifier on a lab's reviewed cases (an
    RQ job on the ``training`` queue): the dataset it was given, its progress, and the
    candidate versions it registered (inactive) with both versions' held-out metrics."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    stage = models.CharField(max_length=60, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    device = models.CharField(max_length=32, blank=True)
    dataset = models.JSONField(help_text="Slides with labelled points, split by case")
    parameters = models.JSONField(default=dict, blank=True, help_text="Training settings")
    result = models.JSONField(default=dict, blank=True, help_text="Candidates and metrics")
    error = models.TextField(blank=True)
    base_detector = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    base_classifier = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    candidate_detector = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, related_name="+", null=True, blank=True
    )
    candidate_classifier = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, related_name="+", null=True, blank=True
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Training run {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED
