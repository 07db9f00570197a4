"""jit benchmark: jaxrnn vs flax's nn.RNN vs torch, forward and forward+backward, in one process.

For each cell (RNN tanh, LSTM, GRU) and size, every variant is timed in
interleaved rounds (A B C A B C ...) after warm-up, with block_until_ready,
each sample long enough (an inner loop) to rise above timer noise. The table
gives the median, the spread (min-max of the samples, % of the median), the
ratio to torch, the achieved GFLOP/s and the fraction of this machine's float32
matmul peak, measured in the same process with a large GEMM.

    python experiments/benchmark.py --quick                # under a minute
    python experiments/benchmark.py --out benchmark.json   # the full table
    python experiments/benchmark.py --cells lstm --sizes b32-h256 --dtype float64 --bidirectional
    python experiments/benchmark.py --isa avx2 --out benchmark.json   # jaxrnn and torch both held to AVX2
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn.kernels import cpu

# -- config ----------------------------------------------------------------------------------
SIZES = {  # name: (batch, seq_len, input, hidden, num_layers, bidirectional, with seq_lengths)
    "teach": (1, 35, 37, 37, 1, False, False),
    "b32-h256": (32, 100, 64, 256, 1, False, False),
    "b64-h512": (64, 200, 128, 512, 1, False, False),
    "bi2-lengths": (32, 100, 64, 256, 2, True, True),
}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
FLAX_CELLS = {"rnn": ["SimpleCell"], "lstm": ["LSTMCell", "OptimizedLSTMCell"], "gru": ["GRUCell"]}
MIN_SAMPLE_S = 0.02  # each timed sample runs the function enough times to last this long
# Before each sample: an untimed pause, because torch's OpenMP workers (and XLA's) spin for a while
# after a call and would steal the cores from whichever variant is timed next; then one untimed call,
# because after the pause the first call pays for waking the idle cores and threads (on this 2-vCPU
# machine the LSTM kernel's first call after 50 ms idle took a median 14.3 ms against 8.9 ms warm).
SETTLE_S = 0.05
DTYPES = ("float32", "float64", "bfloat16")


@dataclass
class Variant:
    name: str
    fn: object  # () -> result, already warmed up
    block: object  # result -> None, waits for completion
    compile_s: float | None = None
    params: object = None  # the parameters a jax variant runs with


def forward_flops(batch, seq_len, inp, hidden, layers, bidirectional, gates) -> float:
    """Multiply-adds of the input and recurrent matmuls, times two (padding counted: it is computed)."""
    D = 2 if bidirectional else 1
    flops = 0.0
    for layer in range(layers):
        layer_in = inp if layer == 0 else D * hidden
        flops += D * seq_len * 2 * batch * gates * hidden * (layer_in + hidden)
    return flops


def matmul_peak_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = min(_timeit(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timeit(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _jax_variant(name, apply, params, args, mode, compile_times) -> Variant:
    """jit(forward) or jit(grad of sum(output)) w.r.t. all parameters; compile time measured."""
    if mode == "fwd":
        fn = lambda p, *a: apply(p, *a)  # noqa: E731
    else:
        fn = jax.grad(lambda p, *a: jnp.sum(apply(p, *a)))
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(params, *args).compile()
    compile_s = time.perf_counter() - start
    compile_times[(name, mode)] = compile_s
    return Variant(name, lambda: compiled(params, *args), jax.block_until_ready, compile_s, params)


def _nnx_variant(cell, params, args, mode, compile_times, layers, bidirectional, dtype) -> Variant:
    """jaxrnn.nnx's layer with ``params``, under nnx.jit: forward, or nnx.grad of sum(output)."""
    from flax import nnx

    import jaxrnn.nnx

    x = args[0]
    model = getattr(jaxrnn.nnx, cell.upper())(
        x.shape[-1],
        params["weight_hh_l0"].shape[1],
        num_layers=layers,
        bidirectional=bidirectional,
        param_dtype=dtype,
        rngs=nnx.Rngs(0),
    )
    for name, value in params.items():
        getattr(model, name)[...] = value
    model.eval()

    def forward(model, x, lengths=None):
        return model(x, seq_lengths=lengths)[0]

    fn = nnx.jit(forward if mode == "fwd" else nnx.grad(lambda m, *a: jnp.sum(forward(m, *a))))
    start = time.perf_counter()
    jax.block_until_ready(fn(model, *args))  # compiles
    compile_s = time.perf_counter() - start
    compile_times[("jaxrnn nnx", mode)] = compile_s
    return Variant("jaxrnn nnx (nnx.jit)", lambda: fn(model, *args), jax.block_until_ready, compile_s)


def size_config(size: str, force_bidirectional: bool) -> tuple:
    batch, seq_len, inp, hidden, layers, bidirectional, with_lengths = SIZES[size]
    return batch, seq_len, inp, hidden, layers, bidirectional or force_bidirectional, with_lengths


def jax_variants(cell, size, mode, rng, compile_times, quick, dtype, force_bidirectional):
    batch, seq_len, inp, hidden, layers, bidirectional, with_lengths = size_config(size, force_bidirectional)
    x = jnp.asarray(rng.standard_normal((seq_len, batch, inp)), dtype)  # time-major, like torch's default
    lengths = jnp.asarray(rng.integers(seq_len // 2, seq_len + 1, batch), jnp.int32) if with_lengths else None
    args = (x,) if lengths is None else (x, lengths)
    variants = []
    # "default" is the layer as constructed with no options (float32 on CPU: the CPU kernel).
    # The others force the XLA loop: (unroll, hoist_input_projection, fused_backward); fused is grad-only.
    options = [("default", {})]
    xla_options = [(1, False, False), (1, False, True)]
    if not quick:
        xla_options += [(1, True, False), (1, True, True), (4, False, True)]
    for unroll, hoist, fused in xla_options:
        if fused and mode == "fwd":
            continue  # the forward of fused_backward is the plain loop
        name = f"xla unroll={unroll}" + (" hoisted" if hoist else "") + (" fused" if fused else "")
        options.append(
            (name, {"cpu_kernel": "never", "unroll": unroll, "hoist_input_projection": hoist, "fused_backward": fused})
        )
    for name, kwargs in options:
        module = jaxrnn.recurrent_layer(
            cell, hidden_size=hidden, num_layers=layers, bidirectional=bidirectional, param_dtype=dtype, **kwargs
        )
        params = module.init(jax.random.key(0), x)

        def apply(p, x, lengths=None, module=module):
            return module.apply(p, x, seq_lengths=lengths)[0]

        variants.append(_jax_variant(f"jaxrnn {name}", apply, params, args, mode, compile_times))

    # The same default layer through the two other APIs: the functional core under jax.jit, and the NNX
    # layer under nnx.jit (its idiomatic use: the module passed to the jitted function on every call).
    linen_params = variants[0].params["params"]
    function = getattr(jaxrnn.functional, cell)
    variants.append(
        _jax_variant(
            "jaxrnn functional",
            lambda p, x, lengths=None: function(p, x, seq_lengths=lengths)[0],
            linen_params,
            args,
            mode,
            compile_times,
        )
    )
    variants.append(_nnx_variant(cell, linen_params, args, mode, compile_times, layers, bidirectional, dtype))

    for cell_name in FLAX_CELLS[cell]:
        model = FlaxStack(cell_name, hidden, layers, bidirectional, dtype)
        params = jax.tree.map(lambda a: a.astype(dtype), model.init(jax.random.key(0), *args))
        variants.append(_jax_variant(f"flax nn.RNN({cell_name})", model.apply, params, args, mode, compile_times))
    return variants


class FlaxStack(nn.Module):
    """flax's own nn.RNN (or nn.Bidirectional) with a built-in cell, stacked ``layers`` deep."""

    cell_name: str
    hidden: int
    layers: int
    bidirectional: bool
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, lengths=None):
        def cell():
            # flax's orthogonal init has no bfloat16 QR: there, initialize in float32 and cast the params after.
            param_dtype = "float32" if self.dtype == "bfloat16" else self.dtype
            return getattr(nn, self.cell_name)(self.hidden, dtype=self.dtype, param_dtype=param_dtype)

        for _ in range(self.layers):
            forward = nn.RNN(cell(), time_major=True)
            if self.bidirectional:
                backward = nn.RNN(cell(), time_major=True)
                x = nn.Bidirectional(forward, backward, time_major=True)(x, seq_lengths=lengths)
            else:
                x = forward(x, seq_lengths=lengths)
        return x


def torch_variant(cell, size, mode, rng, dtype, force_bidirectional):
    import torch

    torch.set_num_threads(os.cpu_count())
    batch, seq_len, inp, hidden, layers, bidirectional, with_lengths = size_config(size, force_bidirectional)
    torch_dtype = getattr(torch, dtype)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        inp, hidden, num_layers=layers, bidirectional=bidirectional, dtype=torch_dtype
    )
    x = torch.tensor(rng.standard_normal((seq_len, batch, inp)), dtype=torch_dtype)
    lengths = torch.tensor(rng.integers(seq_len // 2, seq_len + 1, batch)) if with_lengths else None

    def run():
        inputs = x
        if lengths is not None:
            inputs = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, _ = module(inputs)
        if lengths is not None:
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=seq_len)
        return out

    if mode == "fwd":

        def fn():
            with torch.no_grad():
                return run()
    else:

        def fn():
            module.zero_grad(set_to_none=True)
            run().sum().backward()

    return Variant(f"torch nn.{cell.upper()}", fn, lambda _: None)


def measure(variants, repeats):
    """Interleaved timing; returns {name: [seconds per call, ...]}."""
    inner = {}
    for v in variants:  # warm up, then pick an inner loop count so one sample lasts >= MIN_SAMPLE_S
        for _ in range(2):
            v.block(v.fn())
        once = _timeit(lambda v=v: v.block(v.fn()))
        inner[v.name] = max(1, int(MIN_SAMPLE_S / max(once, 1e-7)))
    samples = {v.name: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            n = inner[v.name]

            def loop(v=v, n=n):
                for _ in range(n):
                    result = v.fn()
                v.block(result)

            time.sleep(SETTLE_S)
            v.block(v.fn())
            samples[v.name].append(_timeit(loop) / n)
    return samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="rnn,lstm,gru")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {list(SIZES)}")
    p.add_argument("--modes", default="fwd,grad", help="fwd (forward) and/or grad (forward+backward)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="inputs and parameters, all frameworks")
    p.add_argument("--bidirectional", action="store_true", help="make every size bidirectional")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="teaching and b32-h256 sizes, default variants, 3 repeats")
    p.add_argument("--no-torch", action="store_true")
    add_isa_option(p)
    p.add_argument("--out", help="write all samples and the table as JSON here")
    p.add_argument("--from-json", help="print the tables of an earlier run's --out file instead of measuring")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(f"machine: {saved['machine']}")
        print(f"{saved['dtype']} matmul peak (2048^3 GEMM in jax): {saved['peak_gflops']:.0f} GFLOP/s\n")
        print_rows(saved["rows"])
        print("\n## Fastest of each family\n")
        print_condensed(saved["rows"])
        print("\n## Targets\n")
        print_targets(saved["rows"], saved["train_step_compile_s"])
        return 0
    if args.quick:
        args.sizes, args.repeats = "teach,b32-h256", 3
    if args.isa:  # before torch is imported: its libraries read their switches once
        os.environ.update(cpu.isa_environment(args.isa))
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    cells, sizes, modes = args.cells.split(","), args.sizes.split(","), args.modes.split(",")
    for name, allowed in (("cell", GATES), ("size", SIZES), ("mode", ("fwd", "grad"))):
        chosen = {"cell": cells, "size": sizes, "mode": modes}[name]
        bad = [c for c in chosen if c not in allowed]
        if bad:
            p.error(f"unknown {name} {bad}; choose from {list(allowed)}")
    have_torch = not args.no_torch
    if have_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: torch columns skipped")
            have_torch = False

    peak = matmul_peak_gflops(args.dtype)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}"
    if have_torch:
        machine += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    machine += ", " + isa_summary(have_torch)
    print(f"machine: {machine}")
    print(f"{args.dtype} matmul peak (2048^3 GEMM in jax): {peak:.0f} GFLOP/s\n")

    rng = np.random.default_rng(0)
    rows, compile_times = [], {}
    for cell in cells:
        for size in sizes:
            batch, seq_len, inp, hidden, layers, bidirectional, _ = size_config(size, args.bidirectional)
            flops = forward_flops(batch, seq_len, inp, hidden, layers, bidirectional, GATES[cell])
            for mode in modes:
                variants = jax_variants(
                    cell, size, mode, rng, compile_times, args.quick, args.dtype, args.bidirectional
                )
                if have_torch:
                    variants.append(torch_variant(cell, size, mode, rng, args.dtype, args.bidirectional))
                samples = measure(variants, args.repeats)
                torch_median = statistics.median(samples[variants[-1].name]) if have_torch else None
                mode_flops = flops * (1 if mode == "fwd" else 3)
                for v in variants:
                    s = samples[v.name]
                    median = statistics.median(s)
                    rows.append(
                        {
                            "cell": cell,
                            "size": size,
                            "mode": mode,
                            "variant": v.name,
                            "median_ms": median * 1e3,
                            "spread_pct": (max(s) - min(s)) / median * 100,
                            "vs_torch": median / torch_median if torch_median else None,
                            "gflops": mode_flops / median / 1e9,
                            "peak_frac": mode_flops / median / 1e9 / peak,
                            "compile_s": v.compile_s,
                            "samples_s": s,
                        }
                    )
                print_rows([r for r in rows if (r["cell"], r["size"], r["mode"]) == (cell, size, mode)])

    train_compile = lstm_train_step_compile_time()
    print(f"\ncompile time (trace + compile) of a 2-layer LSTM language-model train step: {train_compile:.2f} s")
    print("\n## Summary (all rows)\n")
    print_rows(rows, header=True)
    print("\n## Fastest of each family\n")
    print_condensed(rows)
    print("\n## Targets\n")
    print_targets(rows, train_compile)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "dtype": args.dtype,
                    "bidirectional": args.bidirectional,
                    "peak_gflops": peak,
                    "train_step_compile_s": train_compile,
                    "rows": rows,
                },
                f,
                indent=1,
            )
        print(f"\nwrote {args.out}")
    return 0


def add_isa_option(parser: argparse.ArgumentParser) -> None:
    """``--isa``, shared with train_benchmark.py; the caller applies it with ``cpu.isa_environment``."""
    parser.add_argument(
        "--isa",
        choices=cpu.ISAS,
        help="hold jaxrnn's kernel (JAXRNN_CPU_ISA) and torch (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, "
        "ATEN_CPU_CAPABILITY) to this instruction set; default: the best each finds",
    )


def isa_summary(have_torch: bool) -> str:
    """Which instruction sets this run's jaxrnn kernel and torch use, and the switches that chose them."""
    build, problem = cpu.isa()
    text = f"jaxrnn kernel build {build or problem}"
    if have_torch:
        import torch

        text += f", torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    switches = [f"{k}={os.environ[k]}" for k in cpu.isa_environment("avx2") if k in os.environ]
    return text + (f" ({' '.join(switches)})" if switches else "")


def lstm_train_step_compile_time() -> float:
    model = jaxrnn.SequenceModel(vocab_size=65, hidden_size=256, cell="lstm", num_layers=2, embedding_size=64)
    batch = {"inputs": jnp.zeros((32, 100), jnp.int32), "targets": jnp.zeros((32, 100), jnp.int32)}
    params = model.init(jax.random.key(0), batch["inputs"])["params"]
    optimizer = jaxrnn.make_optimizer("adam", 1e-3, clip_norm=1.0)
    state = jaxrnn.init_train_state(params, optimizer)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    start = time.perf_counter()
    step.lower(state, batch, None).compile()
    return time.perf_counter() - start


def _family_best(rows, cell, size, mode):
    """(torch row, fastest flax row, jaxrnn default row, fastest jaxrnn row) for one table group."""
    group = [r for r in rows if (r["cell"], r["size"], r["mode"]) == (cell, size, mode)]

    def fastest(prefix):
        family = [r for r in group if r["variant"].startswith(prefix)]
        return min(family, key=lambda r: r["median_ms"]) if family else None

    default = next((r for r in group if r["variant"] == "jaxrnn default"), None)
    return fastest("torch"), fastest("flax"), default, fastest("jaxrnn")


def _groups(rows):
    return list(dict.fromkeys((r["cell"], r["size"], r["mode"]) for r in rows))


def print_condensed(rows):
    """One line per (cell, size, mode): torch, the fastest flax cell, jaxrnn's default and its fastest option."""
    print(
        "| cell | size | mode | torch ms | flax best ms | jaxrnn default ms (vs torch) "
        "| jaxrnn best ms (vs torch, vs flax) | best jaxrnn variant |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cell, size, mode in _groups(rows):
        torch_row, flax_row, default, best = _family_best(rows, cell, size, mode)
        torch_ms = torch_row["median_ms"] if torch_row else None
        flax_ms, default_ms, best_ms = flax_row["median_ms"], default["median_ms"], best["median_ms"]

        def vs(ms, ref):
            return f"{ms / ref:.2f}x" if ref else "-"

        torch_text = f"{torch_ms:.3g}" if torch_ms else "-"
        print(
            f"| {cell} | {size} | {mode} | {torch_text} | {flax_ms:.3g} "
            f"| {default_ms:.3g} ({vs(default_ms, torch_ms)}) "
            f"| {best_ms:.3g} ({vs(best_ms, torch_ms)}, {vs(best_ms, flax_ms)}) "
            f"| {best['variant'].removeprefix('jaxrnn ')} |"
        )


def print_targets(rows, train_compile_s):
    """Checks the speed targets of the benchmark issue against this run (fastest jaxrnn option of each group)."""
    checks = []
    for cell, size, mode in _groups(rows):
        torch_row, flax_row, _, best = _family_best(rows, cell, size, mode)
        if torch_row is None:
            continue
        to_torch, to_flax = best["median_ms"] / torch_row["median_ms"], best["median_ms"] / flax_row["median_ms"]
        where = f"{cell} {size} {mode} ({best['variant'].removeprefix('jaxrnn ')})"
        if mode == "grad" and size in ("b32-h256", "b64-h512"):
            checks.append(
                (
                    where,
                    "<= 0.9x torch and <= 0.75x flax",
                    f"{to_torch:.2f}x, {to_flax:.2f}x",
                    to_torch <= 0.9 and to_flax <= 0.75,
                )
            )
        elif mode == "fwd" and size in ("b32-h256", "b64-h512"):
            checks.append((where, "<= 1.0x torch", f"{to_torch:.2f}x", to_torch <= 1.0))
        elif mode == "grad" and size == "teach":
            checks.append((where, "<= 0.5x torch", f"{to_torch:.2f}x", to_torch <= 0.5))
    checks.append(("2-layer LSTM train step compile", "<= 2 s", f"{train_compile_s:.2f} s", train_compile_s <= 2.0))
    print("| what | target | measured | holds |")
    print("|---|---|---|---|")
    for where, target, measured, holds in checks:
        print(f"| {where} | {target} | {measured} | {'yes' if holds else 'no'} |")
    print(f"\n{sum(c[3] for c in checks)} of {len(checks)} targets hold.")


def print_rows(rows, header=True):
    if header:
        print("| cell | size | mode | variant | median ms | spread | vs torch | GFLOP/s | % peak | compile s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] is not None else "-"
        comp = f"{r['compile_s']:.2f}" if r["compile_s"] is not None else "-"
        print(
            f"| {r['cell']} | {r['size']} | {r['mode']} | {r['variant']} | {r['median_ms']:.3f} | "
            f"{r['spread_pct']:.0f}% | {vs} | {r['gflops']:.1f} | {r['peak_frac'] * 100:.0f}% | {comp} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
