#!/usr/bin/env python3
"""Cross-check rllr's PPO against TRL's `PPOTrainer.step` on the same base, data and settings.

Driven by scripts/trl-ppo-crosscheck.sh (docs/ppo-vs-trl.md); every setting is read from the
committed rllr config (configs/trl-crosscheck.toml) so the two sides cannot drift apart.

    prepare   merge the shipped SFT adapter into SmolLM2-135M-Instruct once (M_sft, loaded by both
              sides) and re-base a copy of the shipped label RM onto that directory
    check-rm  score pairs with the label RM in transformers and compare with
              `rllr-train eval reward --scores` (must agree within 1e-3); also show that a
              one-detail change of the prompt rendering (a system turn) moves the scores far more
    trl       PPO with TRL: M_sft + a fresh LoRA + value head, reference = adapter disabled,
              rewards from the label RM at the last token of prompt + response (EOS kept)
    compare   per-step table (markdown), first/last-quarter means and an SVG plot of both runs
"""

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_cfg(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


# ---- prompt rendering: trainer/src/stage.rs::prompt_text with core/src/template.rs ChatML ----------


def load_task(path):
    with open(path) as f:
        return json.load(f)


def capitalize(s):
    return s[:1].upper() + s[1:]


def query_text(task, inp):
    """TaskSpec::query: `instruction\\ninput`, a pair's input as `Field1: a\\nField2: b`."""
    fields = task["input_fields"]
    if isinstance(inp, str):
        text = inp
    else:
        a, b = inp
        text = f"{capitalize(fields[0])}: {a}\n{capitalize(fields[1])}: {b}"
    return task["instruction"] if not text else f"{task['instruction']}\n{text}"


def prompt_text(task, inp, system=None):
    """ChatTemplate::ChatMl{default_system: None}.render_prompt (the checkpoint's rllr.json says
    `chatml`, whose default system text is none)."""
    out = ""
    if system:
        out += f"<|im_start|>system\n{system}<|im_end|>\n"
    return out + f"<|im_start|>user\n{query_text(task, inp)}<|im_end|>\n<|im_start|>assistant\n"


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def response_ids(tok, text, eos_id):
    """stage::response_ids: text + `<|im_end|>`, then EOS unless that already is EOS."""
    ids = encode(tok, text + "<|im_end|>")
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)
    return ids


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


# ---- models -----------------------------------------------------------------------------------------


def load_causal_lm(base):
    """The base as transformers builds it, weights read with safetensors directly: the file rllr's
    `convert` wrote has no `{"format": "pt"}` metadata, on which transformers 4.36 trips."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(base / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        sys.exit(f"{base}: unexpected {unexpected}, missing {missing}")
    model.tie_weights()
    return model.eval()


def copy_adapter(src, dst, base):
    """A PEFT adapter directory as shipped, its base path replaced; `use_rslora: false` (written by
    rllr, unknown to peft 0.7.1, which TRL 0.7.2 goes with) is dropped: false is the behaviour
    that peft 0.7.1 has anyway."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "adapter_model.safetensors", dst / "adapter_model.safetensors")
    ac = json.load(open(src / "adapter_config.json"))
    if ac.get("use_rslora") is False:
        del ac["use_rslora"]
    ac["base_model_name_or_path"] = base
    json.dump(ac, open(dst / "adapter_config.json", "w"), indent=2)


def prepare(a):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sft, out, rm_src, rm_out = Path(a.sft), Path(a.msft), Path(a.rm), Path(a.rm_out)
    base = (sft / json.load(open(sft / "adapter_config.json"))["base_model_name_or_path"]).resolve()
    model = load_causal_lm(base)
    sft_copy = Path(a.rm_out).parent / "sft-adapter"
    copy_adapter(sft, sft_copy, str(base))
    model = PeftModel.from_pretrained(model, sft_copy).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]:
        if (base / f).exists():
            shutil.copy(base / f, out / f)
    # tokenizers >= 0.20 writes BPE merges as pairs; 0.15 (what transformers 4.36 takes) reads
    # only "a b" strings and knows no `ignore_merges` (false is its behaviour). Same tokenizer.
    tj = json.load(open(out / "tokenizer.json"))
    bpe = tj["model"]
    if bpe.get("merges") and isinstance(bpe["merges"][0], list):
        assert not any(" " in x for m in bpe["merges"] for x in m)
        bpe["merges"] = [" ".join(m) for m in bpe["merges"]]
    if bpe.get("ignore_merges") is False:
        del bpe["ignore_merges"]
    json.dump(tj, open(out / "tokenizer.json", "w"), ensure_ascii=False)
    man = json.load(open(sft / "rllr.json"))
    man.update(adapter=None, base_checkpoint=None)
    man["provenance"].update(
        command=["scripts/trl-ppo-crosscheck.py", "prepare"],
        created_unix=int(time.time()),
        stage="merge",
        source=f"peft merge_and_unload of {sft} over {base}",
    )
    json.dump(man, open(out / "rllr.json", "w"), indent=2)
    # The RM adapter as shipped, its base pointed at the merged directory (same weights).
    copy_adapter(rm_src, rm_out, str(out.resolve()))
    man = json.load(open(rm_src / "rllr.json"))
    man["base_checkpoint"] = str(out.resolve())
    json.dump(man, open(rm_out / "rllr.json", "w"), indent=2)
    print(f"M_sft -> {out} ({sum(p.numel() for p in model.parameters())} parameters); RM -> {rm_out}")


class RewardModel:
    """The label RM in transformers: LlamaForSequenceClassification(M_sft) + the PEFT adapter with
    its `score` head (modules_to_save). The score is read at the last non-padding position (the
    stock pooling looks for the first pad id, which is the EOS `<|im_end|>` itself here). With
    `head_dropout`, train mode also drops the head's input as the released code's value head does."""

    def __init__(self, msft, rm_dir, head_dropout=0.1):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        self.torch = torch
        base = AutoModelForSequenceClassification.from_pretrained(
            msft, num_labels=1, torch_dtype=torch.float32
        )
        self.model = PeftModel.from_pretrained(base, rm_dir)
        self.model.eval()
        inner = self.model.base_model.model
        self.body, self.head = inner.model, inner.score
        self.head_dropout = head_dropout

    def head_weight(self):
        return self.head.modules_to_save["default"].weight.detach().clone()

    def score(self, seqs, train=False, pad_id=2):
        torch = self.torch
        self.model.train(train)
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            h = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
            last = h[torch.arange(len(seqs)), mask.sum(1) - 1]
            if train and self.head_dropout > 0:
                last = torch.nn.functional.dropout(last, self.head_dropout, training=True)
            return self.head(last).squeeze(-1).tolist()


def check_rm(a):
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(a.threads)
    task = load_task(a.task)
    tok = AutoTokenizer.from_pretrained(a.msft)
    rm = RewardModel(a.msft, a.rm)
    pairs = read_jsonl(a.pairs)
    ref = {r["id"]: r for r in read_jsonl(a.rllr_scores)}
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rows, worst = [], 0.0
    for system in [None, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"]:
        seqs, keys = [], []
        for p in pairs:
            prompt = encode(tok, prompt_text(task, p["input"], system))
            for k in ["chosen", "rejected"]:
                seqs.append(prompt + response_ids(tok, p[k], eos))
                keys.append((p["id"], k))
        scores = rm.score(seqs)
        diffs = [abs(s - ref[i][k]) for s, (i, k) in zip(scores, keys)]
        if system is None:
            worst = max(diffs)
            rows = [(i, k, s, ref[i][k]) for s, (i, k) in zip(scores, keys)]
            first = encode(tok, prompt_text(task, pairs[0]["input"]))
        else:
            alt = max(diffs)
    print("| pair | response | transformers | rllr | |diff| |")
    print("|---|---|---:|---:|---:|")
    for i, k, s, r in rows:
        print(f"| {i} | {k} | {s:.5f} | {r:.5f} | {abs(s - r):.2e} |")
    print(f"\nmax |transformers - rllr| = {worst:.2e} over {len(rows)} texts (rendering: no system turn)")
    print(f"with a SmolLM system turn added to the prompt instead: max diff {alt:.3f} (the check is sensitive)")
    print(f"prompt ids of pair 1 ({len(first)} tokens): {first[:12]} ... {first[-6:]}")
    if worst > 1e-3:
        sys.exit("RM scores differ from rllr's by more than 1e-3")


# ---- TRL PPO ----------------------------------------------------------------------------------------


def run_trl(a):
    import torch
    import transformers
    import trl
    import peft
    from peft import LoraConfig
    from transformers import AutoTokenizer, get_scheduler
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    torch.set_num_threads(a.threads)
    cfg = load_cfg(a.config)
    p, t, l = cfg["ppo"], cfg["train"], cfg["lora"]
    steps, bs = a.steps or t["max_steps"], t["batch_size"]
    mini = p.get("mini_batch_size", 0) or bs
    msft, rm_dir = p["model"], p["reward_model"]
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(p["task"])
    tok = AutoTokenizer.from_pretrained(msft)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    stop_ids = sorted({eos, tok.convert_tokens_to_ids("<|im_start|>")})  # EOS + template stop strings
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos

    examples = read_jsonl(p["train"])[: p["limit"]]
    prompts = []
    for ex in examples:
        ids = encode(tok, prompt_text(task, ex["input"]))
        if len(ids) <= p["max_prompt_len"]:
            prompts.append((ex, ids))

    ppo_config = PPOConfig(
        model_name=str(msft),
        learning_rate=t["learning_rate"],
        batch_size=bs,
        mini_batch_size=mini,
        gradient_accumulation_steps=1,
        ppo_epochs=p["ppo_epochs"],
        init_kl_coef=p["init_kl_coef"],
        adap_kl_ctrl=p["adaptive_kl"],
        target=p["kl_target"],
        horizon=p["kl_horizon"],
        gamma=p["gamma"],
        lam=p["gae_lambda"],
        cliprange=p["cliprange"],
        cliprange_value=p["cliprange_value"],
        vf_coef=p["vf_coef"],
        ratio_threshold=p["ratio_threshold"],
        kl_penalty="kl",
        use_score_scaling=p["score_norm"],
        use_score_norm=p["score_norm"],
        max_grad_norm=t["max_grad_norm"],
        seed=t["seed"],
        optimize_cuda_cache=False,
    )
    lora = LoraConfig(
        r=l["lora_r"],
        lora_alpha=l["lora_alpha"],
        lora_dropout=l["lora_dropout"],
        target_modules=l["lora_targets"].split(","),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(t["seed"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained(
        msft, peft_config=lora, torch_dtype=torch.float32
    )
    rm = RewardModel(msft, rm_dir)
    if a.value_head == "rm":
        # rllr's value model starts from the RM (adapter + head, method.md §4). TRL's value head
        # sits on the policy's body, so only the head can be carried over.
        with torch.no_grad():
            model.v_head.summary.weight.copy_(rm.head_weight())
            model.v_head.summary.bias.zero_()
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=t["learning_rate"],
        betas=(t["beta1"], t["beta2"]),
        eps=t["adam_eps"],
        weight_decay=t["weight_decay"],
    )
    scheduler = get_scheduler(t["schedule"], optimizer, num_warmup_steps=t["warmup_steps"], num_training_steps=steps)
    trainer = PPOTrainer(ppo_config, model, ref_model=None, tokenizer=tok, optimizer=optimizer, lr_scheduler=scheduler)
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "trainable_params": sum(q.numel() for q in params),
        "value_head": a.value_head,
    }
    print(json.dumps(versions), flush=True)
    json.dump(versions, open(out / "versions.json", "w"), indent=2)

    order = list(range(len(prompts)))
    random.Random(t["seed"]).shuffle(order)
    policy = model.pretrained_model  # PeftModelForCausalLM
    log = open(out / "metrics.jsonl", "w")
    t0 = time.time()
    for step in range(steps):
        batch = [prompts[order[(step * bs + j) % len(order)]] for j in range(bs)]
        # Rollout: eval mode, left-padded batch, T/top-k/top-p sampling, stop at EOS/<|im_start|>.
        tr = time.time()
        model.eval()
        n = max(len(ids) for _, ids in batch)
        inp = torch.full((bs, n), pad, dtype=torch.long)
        att = torch.zeros((bs, n), dtype=torch.long)
        for i, (_, ids) in enumerate(batch):
            inp[i, n - len(ids) :] = torch.tensor(ids)
            att[i, n - len(ids) :] = 1
        torch.manual_seed(t["seed"] * 1000 + step)
        with torch.no_grad():
            gen = policy.generate(
                input_ids=inp,
                attention_mask=att,
                do_sample=True,
                temperature=p["temperature"],
                top_k=p["top_k"],
                top_p=p["top_p"],
                max_new_tokens=p["max_new_tokens"],
                eos_token_id=stop_ids,
                pad_token_id=pad,
            )[:, n:]
        queries, responses = [], []
        for i, (_, ids) in enumerate(batch):
            r = gen[i].tolist()
            cut = next((k for k, x in enumerate(r) if x in stop_ids), None)
            r = r[: cut + 1] if cut is not None else r  # keep the stopping EOS (quirk 3: none added)
            queries.append(torch.tensor(ids))
            responses.append(torch.tensor(r if r else [eos]))
        dt_roll = time.time() - tr
        # Scores: the label RM at the last token of query + response, dropout on as rllr's default.
        ts = time.time()
        scores = rm.score([q.tolist() + r.tolist() for q, r in zip(queries, responses)], train=p["dropout"], pad_id=pad)
        dt_score = time.time() - ts
        # Update: train mode (dropout on in the old-logprob/value, reference and training passes).
        tu = time.time()
        model.train(p["dropout"])
        stats = trainer.step(queries, responses, [torch.tensor(s) for s in scores])
        dt_upd = time.time() - tu
        texts = [tok.decode(r, skip_special_tokens=True) for r in responses]
        acc, unparsed = rollout_accuracy(task, [ex for ex, _ in batch], texts)
        rec = {"step": step + 1}
        for k, v in stats.items():
            if hasattr(v, "ndim") and getattr(v, "ndim", 1) == 0 or isinstance(v, (int, float)):
                rec[k.removeprefix("ppo/")] = float(v)
        rec["objective/scores"] = sum(scores) / len(scores)
        rec["ppo/mean_scores"] = float(stats["ppo/mean_scores"])
        rec["ppo/std_scores"] = float(stats["ppo/std_scores"])
        rec["tokens/responses_len_mean"] = float(stats["tokens/responses_len_mean"])
        rec["rollout/label_accuracy"] = acc
        rec["rollout/unparseable"] = unparsed
        rec["time/rollout_s"], rec["time/scoring_s"], rec["time/update_s"] = dt_roll, dt_score, dt_upd
        rec["elapsed_s"] = time.time() - t0
        rec["sample"] = texts[0]
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(
            f"step {step + 1}/{steps} score {rec['objective/scores']:.3f} kl {rec['objective/kl']:.4f} "
            f"approxkl {rec['policy/approxkl']:.2e} clipfrac {rec['policy/clipfrac']:.3f} "
            f"len {rec['tokens/responses_len_mean']:.1f} s {dt_roll + dt_score + dt_upd:.1f}",
            flush=True,
        )


def rollout_accuracy(task, examples, texts):
    """Parse `Answer: <display>` (the last answer line) against the gold label."""
    prefix = task["answer_prefix"]
    right = unparsed = 0
    for ex, text in zip(examples, texts):
        pos = text.rfind(prefix)
        got = None
        if pos >= 0:
            ans = text[pos + len(prefix) :].strip().lower()
            for lab in task["labels"]:
                if ans.startswith(lab["display"].lower()) or ans.startswith(lab["name"].lower()):
                    got = lab["name"]
                    break
        if got is None:
            unparsed += 1
        right += got == ex.get("label")
    return right / len(texts), unparsed / len(texts)


# ---- comparison -------------------------------------------------------------------------------------


def compare(a):
    rl, tr = read_jsonl(a.rllr), read_jsonl(a.trl)
    n = min(len(rl), len(tr))
    sps = lambda r: r["time/rollout_s"] + r["time/scoring_s"] + r["time/update_s"]
    g = lambda r, k: r.get(k, float("nan"))
    lines = [
        "| step | rllr score | TRL score | rllr KL | TRL KL | rllr approxkl | TRL approxkl | rllr clipfrac | TRL clipfrac | rllr len | TRL len | rllr s/step | TRL s/step |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(n):
        x, y = rl[i], tr[i]
        lines.append(
            f"| {i + 1} | {g(x, 'objective/scores'):.3f} | {g(y, 'objective/scores'):.3f} "
            f"| {g(x, 'objective/kl'):.4f} | {g(y, 'objective/kl'):.4f} "
            f"| {g(x, 'policy/approxkl'):.2e} | {g(y, 'policy/approxkl'):.2e} "
            f"| {g(x, 'policy/clipfrac'):.3f} | {g(y, 'policy/clipfrac'):.3f} "
            f"| {g(x, 'tokens/responses_len_mean'):.1f} | {g(y, 'tokens/responses_len_mean'):.1f} "
            f"| {sps(x):.1f} | {sps(y):.1f} |"
        )
    q = max(1, n // 4)
    mean = lambda rs, k: sum(g(r, k) for r in rs) / len(rs)
    summ = ["", "| side | score, first quarter | score, last quarter | KL, first quarter | KL, last quarter | rollout accuracy first → last | mean approxkl | mean clipfrac | loss/value first → last quarter | s/step, mean (rollout + scoring + update) | s/step, median / fastest |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rs in [("rllr", rl[:n]), ("TRL", tr[:n])]:
        summ.append(
            f"| {name} | {mean(rs[:q], 'objective/scores'):.3f} | {mean(rs[-q:], 'objective/scores'):.3f} "
            f"| {mean(rs[:q], 'objective/kl'):.4f} | {mean(rs[-q:], 'objective/kl'):.4f} "
            f"| {mean(rs[:q], 'rollout/label_accuracy'):.2f} → {mean(rs[-q:], 'rollout/label_accuracy'):.2f} "
            f"| {mean(rs, 'policy/approxkl'):.2e} | {mean(rs, 'policy/clipfrac'):.4f} "
            f"| {mean(rs[:q], 'loss/value'):.3f} → {mean(rs[-q:], 'loss/value'):.3f} "
            f"| {sum(sps(r) for r in rs) / len(rs):.1f} ({mean(rs, 'time/rollout_s'):.1f} + {mean(rs, 'time/scoring_s'):.1f} + {mean(rs, 'time/update_s'):.1f}) "
            f"| {sorted(sps(r) for r in rs)[len(rs) // 2]:.1f} / {min(sps(r) for r in rs):.1f} |"
        )
    text = "\n".join(lines + summ) + "\n"
    Path(a.table).write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "rllr-trl"
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = list(range(1, n + 1))
    for k, axis, title in [
        ("objective/scores", ax[0], "raw RM score (batch mean)"),
        ("objective/kl", ax[1], "objective/kl (nats / response)"),
        ("policy/approxkl", ax[2], "policy/approxkl"),
    ]:
        axis.plot(steps, [g(r, k) for r in rl[:n]], "o-", ms=3, label="rllr (candle)")
        axis.plot(steps, [g(r, k) for r in tr[:n]], "s-", ms=3, label="TRL 0.7.2")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("PPO step")
        axis.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.svg, format="svg", metadata={"Date": None})
    print(f"plot -> {a.svg}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--sft", default="models/quickstart/comve/sft")
    s.add_argument("--rm", default="models/quickstart/comve/rm-label")
    s.add_argument("--msft", default="runs/trl-crosscheck/msft")
    s.add_argument("--rm-out", default="runs/trl-crosscheck/rm-label")
    s = sub.add_parser("check-rm")
    s.add_argument("--msft", default="runs/trl-crosscheck/msft")
    s.add_argument("--rm", default="runs/trl-crosscheck/rm-label")
    s.add_argument("--task", default="data/tasks/comve.json")
    s.add_argument("--pairs", required=True)
    s.add_argument("--rllr-scores", required=True)
    s.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("trl")
    s.add_argument("--config", default="configs/trl-crosscheck.toml")
    s.add_argument("--output", default="runs/trl-crosscheck/trl")
    s.add_argument("--value-head", choices=["rm", "fresh"], default="rm")
    s.add_argument("--steps", type=int, default=0, help="override max_steps (smoke runs)")
    s.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("compare")
    s.add_argument("--rllr", default="runs/trl-crosscheck/rllr/metrics.jsonl")
    s.add_argument("--trl", default="runs/trl-crosscheck/trl/metrics.jsonl")
    s.add_argument("--table", default="runs/trl-crosscheck/table.md")
    s.add_argument("--svg", default="docs/ppo-vs-trl.svg")
    a = ap.parse_args()
    os.chdir(ROOT)
    {"prepare": prepare, "check-rm": check_rm, "trl": run_trl, "compare": compare}[a.cmd](a)


if __name__ == "__main__":
    main()
