"""The paper's metrics (Sec. 4.1, 4.3), one per file: subject fidelity (DINO / CLIP-I), prompt fidelity
(CLIP-T or a pluggable judge), PRES and DIV."""
