"""The `confidence` label source's arithmetic (the source itself runs in tests/test_label_sources.py)."""
import pytest

from components.labeling.confidence import labels, step_confidence, step_spans, threshold


def test_steps_are_found_in_the_completion_and_scored_by_their_least_confident_window():
    text = "1+2=3\n3*4=12\nAnswer: 12\n"
    spans = step_spans(text, ["1+2=3", "3*4=12", "Answer: 12"])
    assert spans == [(0, 5), (6, 12), (13, 23)]
    # one token per character, each with its DeepConf confidence; the model was unsure at the "2" of "12"
    tokens = [(i, i + 1, 0.3 if i == 11 else 4.0) for i in range(len(text))]
    conf = step_confidence(tokens, spans, window=1)
    assert conf == [pytest.approx(4.0), pytest.approx(0.3), pytest.approx(4.0)]
    assert step_confidence(tokens, spans, window=2)[1] == pytest.approx((0.3 + 4.0) / 2)  # DeepConf's group mean
    assert step_spans(text, ["nope", "3*4=12"]) == [None, (6, 12)]
    assert step_confidence(tokens, [None, (30, 31)], window=1) == [None, None]


def test_threshold_is_a_quantile_of_right_answers_and_scores_read_as_p_good():
    conf = [[0.9, 0.8], [0.95, 0.4], [0.7, None], [0.1, 0.2]]
    correct = [True, True, True, False]
    tau = threshold(conf, correct, 0.5)  # trace minima of right answers: 0.8, 0.4, 0.7 -> median 0.7
    assert tau == pytest.approx(0.7) and threshold([[1.0], [3.0]], [True, True], 0.25) == pytest.approx(1.5)
    lab = labels([0.95, 0.35, None], tau)
    assert lab.labels == [1, 0, None] and lab.first_error == 1
    assert lab.scores[0] > 0.5 > lab.scores[1] and labels([tau], tau).scores == [pytest.approx(0.5)]
    # DeepConf's confidence is unbounded above: scores stay below 1 and keep their order
    high = labels([tau, 2 * tau, 30 * tau, 300 * tau], tau).scores
    assert high == sorted(high) and len(set(high)) == 4 and high[-1] < 1
    assert labels([None], tau).first_error is None and labels([0.9], tau).first_error == -1
