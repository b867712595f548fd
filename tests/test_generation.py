"""Both generation backends on a real tiny model trained in the session (tests/conftest.py)."""
import pytest

from components.models.generation import Sampling, load_backend


@pytest.fixture(scope="module", params=["vllm", "transformers"])
def backend(request, tiny_model_dir, smoke_cfg):
    return load_backend(request.param, str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)


def test_samples_have_text_ids_logprob_and_finish_reason(backend, smoke_family):
    probs = smoke_family.problems("eval")[:4]
    outs = backend.generate([p.prompt for p in probs], Sampling(n=3, temperature=0.8, max_tokens=48, seed=1))
    assert len(outs) == 4 and all(len(o) == 3 for o in outs)
    for o in outs:
        for s in o:
            assert s.token_ids and s.finish_reason in ("stop", "length")
            assert s.cumulative_logprob is not None and s.cumulative_logprob <= 0
    # The model learned the format: samples end with an answer line. Measured per sample at this
    # temperature on the 60 eval prompts: 239/240 with either backend (rate ~0.996). The bar is half of
    # the 12: a model on another CPU with a rate of only 0.9 misses it with P(Bin(12, 0.9) <= 5) = 5e-5
    # (0.8: 4e-3), while a backend that mangles tokens or sampling answers next to none.
    answered = sum(smoke_family.extract_answer(s.text) is not None for o in outs for s in o)
    assert answered >= 6, answered


def test_generation_stops_at_a_stop_string(backend, smoke_family):
    """A step at a time, as beam search asks (stop at the step separator). transformers' own stop
    strings raised on the character-level tokenizer, so search failed on that backend."""
    prompts = [p.prompt for p in smoke_family.problems("eval")[:4]]
    outs = backend.generate(prompts, Sampling(n=2, temperature=0.8, max_tokens=48, seed=1, stop=("\n",)))
    for o in outs:
        for s in o:
            assert s.text and "\n" not in s.text.rstrip("\n"), s.text  # one step, not the whole trace
            assert len(s.token_ids) < 20, s.text


def test_fixed_seed_reproduces_and_other_seed_differs(backend, smoke_family):
    prompts = [p.prompt for p in smoke_family.problems("eval")[-6:]]
    a = backend.generate(prompts, Sampling(n=4, temperature=1.0, max_tokens=48, seed=7))
    b = backend.generate(prompts, Sampling(n=4, temperature=1.0, max_tokens=48, seed=7))
    c = backend.generate(prompts, Sampling(n=4, temperature=1.0, max_tokens=48, seed=8))
    texts = lambda out: [[s.text for s in o] for o in out]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)


def test_vllm_and_transformers_agree_greedily(tiny_model_dir, smoke_cfg, smoke_family):
    prompts = [p.prompt for p in smoke_family.problems("eval")[:8]]
    greedy = Sampling(n=1, temperature=0.0, max_tokens=48)
    outs = {}
    for name in ("vllm", "transformers"):
        b = load_backend(name, str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)
        outs[name] = [o[0].text for o in b.generate(prompts, greedy)]
    assert outs["vllm"] == outs["transformers"]


def test_token_logprobs_agree_across_backends_and_see_a_slip(tiny_model_dir, smoke_cfg, smoke_family):
    """The prefill pass under the `confidence` source: per-token log P of a given text, the same from
    vLLM and transformers, and lower on a wrong digit than on the right one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    p = smoke_family.problems("eval")[0]
    gold = smoke_family.gold_solution(p)
    first = gold.split("\n")[0]  # e.g. "12+5=17": a slip in the result's last digit
    slip = gold.replace(first, first[:-1] + str((int(first[-1]) + 3) % 10), 1)
    seqs = [tok(p.prompt + text)["input_ids"] for text in (gold, slip)]
    got = {}
    for name in ("vllm", "transformers"):
        b = load_backend(name, str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)
        got[name] = b.token_logprobs(seqs)
    for v, t, ids in zip(got["vllm"], got["transformers"], seqs):
        assert len(v) == len(t) == len(ids) and v[0] is None and t[0] is None
        assert max(abs(a - b) for a, b in zip(v[1:], t[1:])) < 1e-3
    at = len(tok(p.prompt + first[:-1])["input_ids"])  # the result's last digit
    assert got["vllm"][1][at] < got["vllm"][0][at] - 1.0  # the model does not believe the slip


def test_deepconf_token_confidence_is_minus_the_mean_top_k_logprob_on_both_backends(tiny_model_dir, smoke_cfg,
                                                                                    smoke_family):
    """DeepConf's token confidence (arXiv 2508.15260 §2): C_i = -mean of the k largest log-probabilities
    at position i, computed here from the model's logits by hand; vLLM (prompt_logprobs=k, by rank) and
    transformers give it. The `confidence` source used the sampled token's own log-probability."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    p = smoke_family.problems("eval")[1]
    ids = tok(p.prompt + smoke_family.gold_solution(p))["input_ids"]
    with torch.no_grad():
        logp = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(torch.tensor([ids])).logits[0].log_softmax(-1)
    k = 5
    by_hand = [-sum(sorted(row.tolist(), reverse=True)[:k]) / k for row in logp[:-1]]
    for name in ("vllm", "transformers"):
        b = load_backend(name, str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)
        got = b.token_logprobs([ids], top_k=k)[0]
        assert got[0] is None and len(got) == len(ids)
        assert max(abs(a - c) for a, c in zip(got[1:], by_hand)) < 1e-3, name
        own = b.token_logprobs([ids])[0]  # the sampled token's log P: another statistic
        assert max(abs(a + c) for a, c in zip(got[1:], own[1:])) > 0.5


def test_a_prompts_samples_do_not_depend_on_the_prompts_beside_it(backend, smoke_family):
    """The docs promise per-prompt samples (a seed per prompt): the transformers backend seeded a whole
    batch at once, so a prompt's samples changed with the prompts batched beside it."""
    probs = smoke_family.problems("eval")
    lengths = {}
    for p in probs:  # prompts of one length: no padding, so nothing but the seeding could differ
        lengths.setdefault(len(backend.tok(p.prompt)["input_ids"]) if hasattr(backend, "tok") else 0, []).append(p.prompt)
    same = max(lengths.values(), key=len)[:3]
    sampling = Sampling(n=3, temperature=1.0, max_tokens=48, seed=11)
    alone = backend.generate(same[:1], sampling)[0]
    beside = backend.generate(same, sampling)[0]
    assert [s.text for s in alone] == [s.text for s in beside]
    assert len({s.text for s in alone}) > 1  # sampled, not one greedy answer thrice
