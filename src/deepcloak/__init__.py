"""deepcloak: harden a trained PyTorch classifier by masking the features attackers exploit.

DeepCloak (Gao, Wang, Qi et al., arXiv 1702.06763): score each feature of a layer by how much
adversarial examples move it, and insert a fixed 0/1 mask that removes the top-scoring ones.
"""

from __future__ import annotations

__version__ = "0.1.0"
