"""Names the engine shares with the portal, importable without torch: web processes read
them; the workers' classifier and attribution methods are built on them."""

PHASES = ("prophase", "metaphase", "anaphase", "telophase", "non_mitotic")
MITOTIC_PHASES = PHASES[:4]  # the last class is a look-alike: shown, never counted

ATTRIBUTION_METHODS = ("saliency", "integrated_gradients", "occlusion", "gradient_shap", "grad_cam")
SIGNED_METHODS = {"integrated_gradients", "occlusion", "gradient_shap"}  # negative evidence too
