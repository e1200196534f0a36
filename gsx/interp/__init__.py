"""Use SAE features: sae-dashboard feature dashboards that render offline, Neuronpedia export, and steering."""

from gsx.interp.dashboard import (
    DashboardResult,
    FeatureActivity,
    compute_dashboard_data,
    feature_activity,
    generate_dashboard,
    save_dashboard_html,
    top_features,
)
from gsx.interp.neuronpedia import to_neuronpedia, write_neuronpedia_json
from gsx.interp.steering import (
    Continuation,
    FeatureHook,
    FeatureIntervention,
    SteeringEffect,
    direct_logit_effect,
    feature_activations,
    generate,
    promoted_tokens,
    run_logits,
    steering_effect,
)

__all__ = [
    "Continuation",
    "DashboardResult",
    "FeatureActivity",
    "FeatureHook",
    "FeatureIntervention",
    "SteeringEffect",
    "compute_dashboard_data",
    "direct_logit_effect",
    "feature_activations",
    "feature_activity",
    "generate",
    "generate_dashboard",
    "promoted_tokens",
    "run_logits",
    "save_dashboard_html",
    "steering_effect",
    "to_neuronpedia",
    "top_features",
    "write_neuronpedia_json",
]
