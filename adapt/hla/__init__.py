"""HLA-Face's high-level side: the self-supervised task table, its heads, MoCo and the joint
trainer (docs/ARCHITECTURE.md: adapt/hla/)."""
