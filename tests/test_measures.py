"""bench.run.measures: what an epoch measures beside training; here, the test split's wrong predictions."""

import torch

from bench.run.measures import wrong_predictions


def test_top5_counts_the_labels_outside_the_five_highest_logits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [9.0, 8, 7, 6, 5, 4, 3], [1.0, 2, 3, 4, 5, 6, 7]])
    labels = torch.tensor([0, 4, 1])  # right; among the five highest; sixth highest
    assert wrong_predictions(logits, labels).tolist() == [2, 1]
    assert wrong_predictions(logits.bfloat16(), labels).tolist() == [2, 1]
    # With five classes or fewer every label is among the five highest: no top-5 error at all.
    assert wrong_predictions(logits[:, :3], torch.tensor([0, 1, 0])).tolist() == [2, 0]
