"""How `tl.dot` treats fp32 inputs: "ieee" is exact (the default; parity tests rely on it);
"tf32", "tf32x3" and "bf16x3" use tensor cores at some cost in precision."""

PRECISIONS = ("ieee", "tf32", "tf32x3", "bf16x3")
