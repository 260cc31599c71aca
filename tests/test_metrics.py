import math

import torch

from modelsteal.metrics import detection_rates, hellinger_distance, l1_distance, l2_distance, perturbation_summary


def test_distances_on_known_values():
    y = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    t = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert torch.allclose(l1_distance(y, t), torch.tensor([2.0, 0.0]))
    assert torch.allclose(l2_distance(y, t), torch.tensor([math.sqrt(2), 0.0]))
    assert torch.allclose(hellinger_distance(y, t), torch.tensor([1.0, 0.0]))
    s = perturbation_summary(y, t)
    assert math.isclose(s["l1_mean"], 1.0) and math.isclose(s["hellinger_mean"], 0.5)


def test_detection_rates():
    r = detection_rates(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 0, 1]))
    assert math.isclose(r["tpr"], 1.0) and math.isclose(r["tnr"], 2 / 3)
