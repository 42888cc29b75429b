"""Jigsaw permutation tables, written out: 30 classes of the 3x3 puzzle, 24 of the others.

Class ``c`` of a puzzle puts tile ``perm[c][t]`` into slot ``t``. Tiles and slots are both
numbered **column-major**: in a 3x3 grid, 0-2 are the first column top to bottom, 3-5 the second,
6-8 the third (``data/ssl_datasets.py`` builds the grids). The class indices must mean exactly
this to stay compatible with the released ``jig_33_head.pth``.
"""
from __future__ import annotations

# The reference's ``permutations_hamming_max_30.npy`` (0-based): 30 permutations of 9 tiles
# chosen for maximal Hamming distance (Noroozi & Favaro). Row 1 is the identity.
JIGSAW_33 = (
    (8, 0, 7, 6, 2, 3, 5, 4, 1),   # 0
    (0, 1, 2, 3, 4, 5, 6, 7, 8),   # 1
    (1, 2, 0, 4, 3, 6, 7, 8, 5),   # 2
    (2, 3, 1, 0, 5, 4, 8, 6, 7),   # 3
    (3, 4, 5, 1, 7, 8, 0, 2, 6),   # 4
    (4, 5, 3, 8, 6, 7, 1, 0, 2),   # 5
    (5, 6, 4, 7, 8, 0, 2, 1, 3),   # 6
    (6, 7, 8, 2, 0, 1, 3, 5, 4),   # 7
    (7, 8, 6, 5, 1, 2, 4, 3, 0),   # 8
    (0, 1, 2, 3, 8, 6, 4, 5, 7),   # 9
    (1, 0, 3, 5, 7, 8, 2, 6, 4),   # 10
    (2, 3, 4, 8, 5, 1, 6, 7, 0),   # 11
    (3, 2, 6, 4, 0, 7, 5, 1, 8),   # 12
    (4, 6, 0, 1, 3, 2, 7, 8, 5),   # 13
    (5, 4, 7, 2, 1, 3, 8, 0, 6),   # 14
    (6, 5, 8, 7, 2, 0, 1, 4, 3),   # 15
    (7, 8, 1, 6, 4, 5, 0, 3, 2),   # 16
    (8, 7, 5, 0, 6, 4, 3, 2, 1),   # 17
    (0, 1, 2, 3, 8, 7, 4, 6, 5),   # 18
    (1, 0, 3, 7, 4, 2, 6, 5, 8),   # 19
    (2, 3, 0, 1, 6, 5, 8, 4, 7),   # 20
    (3, 2, 1, 0, 5, 4, 7, 8, 6),   # 21
    (4, 5, 6, 2, 0, 8, 3, 7, 1),   # 22
    (5, 4, 8, 6, 7, 1, 0, 2, 3),   # 23
    (6, 7, 4, 8, 1, 0, 5, 3, 2),   # 24
    (7, 8, 5, 4, 3, 6, 2, 1, 0),   # 25
    (8, 6, 7, 5, 2, 3, 1, 0, 4),   # 26
    (0, 1, 2, 5, 4, 7, 3, 8, 6),   # 27
    (1, 0, 3, 6, 8, 2, 5, 7, 4),   # 28
    (2, 3, 0, 4, 1, 5, 7, 6, 8),   # 29
)

# The 2x2, 4x1 and 1x4 puzzles use all 24 permutations of 4 tiles in lexicographic order
# (the table embedded in the reference's jigsaw dataset).
JIGSAW_4 = (
    (0, 1, 2, 3), (0, 1, 3, 2), (0, 2, 1, 3), (0, 2, 3, 1), (0, 3, 1, 2), (0, 3, 2, 1),
    (1, 0, 2, 3), (1, 0, 3, 2), (1, 2, 0, 3), (1, 2, 3, 0), (1, 3, 0, 2), (1, 3, 2, 0),
    (2, 0, 1, 3), (2, 0, 3, 1), (2, 1, 0, 3), (2, 1, 3, 0), (2, 3, 0, 1), (2, 3, 1, 0),
    (3, 0, 1, 2), (3, 0, 2, 1), (3, 1, 0, 2), (3, 1, 2, 0), (3, 2, 0, 1), (3, 2, 1, 0),
)

# puzzle kind -> its table
PERMUTATIONS = {"33": JIGSAW_33, "22": JIGSAW_4, "41": JIGSAW_4, "14": JIGSAW_4}
