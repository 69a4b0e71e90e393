"""The torch-fidelity side of gmbench's feature extractors (``FeatureExtractorBase``
subclasses); imported only when an image metric runs. See :mod:`gmbench.metrics.extractors`."""

from __future__ import annotations

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.helpers import vassert

from gmbench.metrics.classifier import load_classifier


class ClassifierFidelityExtractor(FeatureExtractorBase):
    """torch-fidelity face of :class:`~gmbench.metrics.classifier.SmallConvClassifier`.

    Features: ``pool`` (FID, KID, precision/recall) and ``logits`` (IS).
    Input: uint8 ``(N, C, H, W)``.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        vassert(feature_extractor_weights_path is not None, f"{name} needs feature_extractor_weights_path")
        self.net = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return "pool", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "expecting uint8 images")
        pool, logits = self.net.features(x)
        features = {"pool": pool, "logits": logits}
        return tuple(features[f] for f in self.features_list)


class SafeInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 that never downloads and never unpickles code."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        vassert(feature_extractor_weights_path is not None, "Inception weights path required (gmbench does not download)")
        torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)  # raises on non-tensor pickles
        super().__init__(name, features_list, feature_extractor_weights_path=feature_extractor_weights_path, **kwargs)
