"""The export room's cases: which tiny pipelines are exported, how, and which get quantized.
(A module of its own, not conftest: test modules import it by name, and every room has a conftest.)"""

# case id -> (backbone, tiny pipeline components, gamma, guidance)
FAMILIES = {
    "lcm": ("sd", {"scheduler_cls": "LCMScheduler"}, None, 2.0),
    "lcm_cond": ("sd", {"scheduler_cls": "LCMScheduler", "time_cond_proj_dim": 8}, None, 4.0),  # LCM guidance embedding, no CFG
    "tcd": ("sd", {"scheduler_cls": "TCDScheduler"}, 0.3, 2.0),  # gamma > 0: a noise input
    "tcd_det": ("sd", {"scheduler_cls": "TCDScheduler"}, 0.0, 2.0),  # gamma = 0: deterministic, no noise input
    "euler_a": ("sd", {"scheduler_cls": "EulerAncestralDiscreteScheduler"}, None, 2.0),
    "sdxl_turbo": ("sdxl", {"scheduler_cls": "EulerAncestralDiscreteScheduler"}, None, 0.0),  # SDXL-Turbo: no CFG
    "sdxl_cfg": ("sdxl", {"scheduler_cls": "LCMScheduler"}, None, 2.0),  # CFG against zeros (force_zeros_for_empty_prompt)
    "flux": ("flux", {}, None, 0.0),  # FLUX.1-schnell-like: flow_euler, packed latents, CLIP + T5
}
STEPS = 2


# Quantized schemes are exercised on these cases (one per backbone: CFG and a noise input for SD,
# SDXL's added conditioning, FLUX's Linear-heavy transformer); the others export fp32.
QUANT_FAMILY = "tcd"
QUANT_CASES = ("tcd", "sdxl_turbo", "flux")
