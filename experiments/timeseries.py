"""Time series: the course's stock lab on real prices, and monthly sunspots, against honest baselines.

Many-to-one: a window of past days (open, high, low, volume, close) goes through
an LSTM, and a linear head on its last hidden state predicts the next close,
or the next HORIZON closes at once (the multi-step forecast). Trained with optax
on jaxrnn's training pieces (``make_train_step``, ``fit``), under ``jit``.

No look-ahead anywhere:
* the series is split by time (train, then validation, then test);
* prices are made relative to the window's last close (log ratios), so the
  model never sees the price level, which drifts out of the training range
  (MSFT: $0.07 in 1986, $84 in 2017); volume is a log, standardised with
  statistics of the training span only; sunspots are standardised the same way;
* the model chosen is the one with the best validation error, and the test
  span is used once, at the end.

Baselines on the same test windows: the last value (tomorrow's close = today's)
and the moving average of the last 5 values. The errors are reported in the series'
own units (dollars, sunspot numbers), plus a PNG of prediction vs truth.

    python experiments/timeseries.py                      # MSFT: next close, 5 days; sunspots: next month, 12 months
    python experiments/timeseries.py --series sunspots    # one series
    python experiments/timeseries.py --smoke              # a few steps, to check that everything runs

Data: msft_daily.csv and sunspots_monthly.txt from --data-dir, else
$JAXRNN_DATA, else ~/.cache/jaxrnn, checked by sha256; both are pmdarima's
datasets, and ``jaxrnn.corpora.download('msft')`` / ``download('sunspots')``
fetch them from its repository.
"""

import argparse
import dataclasses
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn.corpora import load_series

# -- config ----------------------------------------------------------------------------------
SPLIT = (0.70, 0.15)  # train, validation; the rest (the latest 15%) is the test span


@dataclasses.dataclass(frozen=True)
class Config:
    series: str
    window: int  # past steps the model reads
    horizon: int  # future steps it predicts at once
    average_over: int = 5  # the moving-average baseline's span (the last 5 days / months)
    hidden_size: int = 64
    num_layers: int = 1
    lr: float = 3e-3
    batch_size: int = 64
    steps: int = 3000
    eval_every: int = 250
    seed: int = 0


RUNS = {
    "msft": Config("msft", window=20, horizon=1),
    "msft-5day": Config("msft", window=20, horizon=5),
    "sunspots": Config("sunspots", window=36, horizon=1, steps=2000, eval_every=100),
    "sunspots-12month": Config("sunspots", window=60, horizon=12, steps=2000, eval_every=100),
}


# -- data ------------------------------------------------------------------------------------
def windows(values: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``(x (window, F), future (horizon,), t)`` where ``future`` is the last column at t+1..t+horizon
    and ``t`` the window's last index: ``(N, window, F)``, ``(N, horizon)``, ``(N,)``."""
    last = np.arange(window - 1, len(values) - horizon)
    x = np.stack([values[t - window + 1 : t + 1] for t in last])
    future = np.stack([values[t + 1 : t + 1 + horizon, -1] for t in last])
    return x, future, last


class Scaler:
    """The model's view of a window, built from the window itself and training-span statistics only."""

    def __init__(self, series: str, train_values: np.ndarray):
        self.series = series
        if series == "msft":  # log volume, standardised on the training span
            logv = np.log1p(train_values[:, 3])
            self.v_mean, self.v_std = logv.mean(), logv.std()
        else:
            self.mean, self.std = train_values[:, -1].mean(), train_values[:, -1].std()

    def inputs(self, x: np.ndarray) -> np.ndarray:
        if self.series == "msft":
            last_close = x[:, -1:, 4:5]
            prices = np.log(x[:, :, [0, 1, 2, 4]] / last_close)  # relative to the last close: no price level
            volume = (np.log1p(x[:, :, 3:4]) - self.v_mean) / self.v_std
            return np.concatenate([prices, volume], axis=-1).astype(np.float32)
        return ((x - self.mean) / self.std).astype(np.float32)

    def targets(self, x: np.ndarray, future: np.ndarray) -> np.ndarray:
        if self.series == "msft":
            return np.log(future / x[:, -1, 4:5]).astype(np.float32)  # log return over the last close
        return ((future - self.mean) / self.std).astype(np.float32)

    def values(self, x: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Predictions back in the series' own units."""
        if self.series == "msft":
            return x[:, -1, 4:5] * np.exp(predicted)
        return predicted * self.std + self.mean


# -- model -----------------------------------------------------------------------------------
class Forecaster(nn.Module):
    """``x (N, window, F) -> (N, horizon)``: an LSTM read of the window, a linear head on its last hidden state."""

    hidden_size: int
    num_layers: int
    horizon: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, (h_n, _) = jaxrnn.LSTM(
            hidden_size=self.hidden_size, num_layers=self.num_layers, batch_first=True, name="rnn"
        )(x)
        return nn.Dense(self.horizon, name="head")(h_n[-1])


def run(config: Config, folder: str | None, out_dir: pathlib.Path, progress: bool) -> dict:
    values, columns = load_series(config.series, folder)  # sha256-verified (jaxrnn.corpora)
    x, future, last = windows(values, config.window, config.horizon)
    n_train, n_valid = int(SPLIT[0] * len(values)), int(SPLIT[1] * len(values))
    # A window belongs to a span when everything it reads and predicts lies in it.
    in_train = last + config.horizon < n_train
    in_valid = (last - config.window + 1 >= n_train) & (last + config.horizon < n_train + n_valid)
    in_test = last - config.window + 1 >= n_train + n_valid
    scaler = Scaler(config.series, values[:n_train])
    inputs, targets = scaler.inputs(x), scaler.targets(x, future)
    split = {name: np.flatnonzero(mask) for name, mask in [("train", in_train), ("valid", in_valid), ("test", in_test)]}
    print(
        f"{config.series}: {len(values)} steps, features {columns}; windows train {len(split['train'])}, "
        f"valid {len(split['valid'])}, test {len(split['test'])} (window {config.window}, horizon {config.horizon})"
    )

    model = Forecaster(config.hidden_size, config.num_layers, config.horizon)
    params = model.init(jax.random.key(config.seed), inputs[:1])["params"]
    optimizer = optax.adam(config.lr)
    state = jaxrnn.init_train_state(params, optimizer)

    def loss_fn(params, batch, rng):
        xb, yb = batch
        return jnp.mean((model.apply({"params": params}, xb) - yb) ** 2), {}

    step = jaxrnn.make_train_step(loss_fn, optimizer)
    predict = jax.jit(lambda params, xb: model.apply({"params": params}, xb))

    def error(params, idx) -> float:  # root mean squared error in the series' units, all horizons
        predicted = scaler.values(x[idx], np.asarray(predict(params, inputs[idx])))
        return float(np.sqrt(np.mean((predicted - future[idx]) ** 2)))

    rng = np.random.default_rng(config.seed)

    def batches():
        while True:
            idx = rng.choice(split["train"], config.batch_size, replace=False)
            yield inputs[idx], targets[idx]

    best = (float("inf"), state.params, 0)
    done, history = 0, []
    while done < config.steps:
        n = min(config.eval_every, config.steps - done)
        state, losses = jaxrnn.fit(step, state, batches(), num_steps=n, progress=progress)
        done += n
        valid = error(state.params, split["valid"])
        history.append({"step": done, "train_mse": float(np.mean(losses)), "valid_rmse": valid})
        print(f"  step {done:5d}  train mse {np.mean(losses):.3e}  valid rmse {valid:.4f}")
        if valid < best[0]:
            best = (valid, state.params, done)

    params = best[1]
    test = split["test"]
    last_value = np.repeat(x[test, -1, -1:], config.horizon, axis=1)
    moving_average = np.repeat(x[test, -config.average_over :, -1].mean(axis=1, keepdims=True), config.horizon, axis=1)
    predicted = scaler.values(x[test], np.asarray(predict(params, inputs[test])))

    def rmse(p):
        return float(np.sqrt(np.mean((p - future[test]) ** 2)))

    def mae(p):
        return float(np.mean(np.abs(p - future[test])))

    results = {
        "config": dataclasses.asdict(config),
        "best_step": best[2],
        "valid_rmse": best[0],
        "test": {
            name: {"rmse": rmse(p), "mae": mae(p)}
            for name, p in [("lstm", predicted), ("last value", last_value), ("moving average", moving_average)]
        },
        "history": history,
    }
    print(f"  test (the latest {len(test)} windows), model from step {best[2]}:")
    for name, r in results["test"].items():
        print(f"    {name:<15} rmse {r['rmse']:.4f}  mae {r['mae']:.4f}")
    plot(out_dir, config, last[test], future[test], predicted, last_value)
    return results


def plot(out_dir: pathlib.Path, config: Config, t: np.ndarray, truth: np.ndarray, predicted, last_value) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    name = f"{config.series}-h{config.horizon}"
    fig, ax = plt.subplots(figsize=(10, 3.5))
    k = config.horizon - 1  # the furthest step ahead
    ax.plot(t + 1 + k, truth[:, k], lw=1, label="truth", color="black")
    ax.plot(t + 1 + k, predicted[:, k], lw=1, label="LSTM")
    ax.plot(t + 1 + k, last_value[:, k], lw=1, ls=":", label="last value")
    ax.set_title(f"{config.series}: {config.horizon} step(s) ahead, test span")
    ax.set_xlabel("trading day since 1986-03-13" if config.series == "msft" else "month since January 1749")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=110)
    print(f"  wrote {out_dir / (name + '.png')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", choices=sorted(RUNS), action="append", help="which runs (default: all)")
    p.add_argument("--data-dir", help="folder holding msft_daily.csv and sunspots_monthly.txt")
    p.add_argument("--out", default="runs/timeseries", help="output folder (results.json, PNGs)")
    p.add_argument("--steps", type=int, help="training steps per run (default: the run's config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="40 steps per run")
    args = p.parse_args(argv)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.series or list(RUNS):
        config = dataclasses.replace(RUNS[name], seed=args.seed)
        if args.smoke:
            config = dataclasses.replace(config, steps=40, eval_every=20)
        elif args.steps:
            config = dataclasses.replace(config, steps=args.steps)
        print(f"== {name}")
        try:
            results[name] = run(config, args.data_dir, out_dir, progress=sys.stderr.isatty())
        except (FileNotFoundError, ValueError) as e:  # missing or corrupt data: say where to put it
            print(f"error: {e}", file=sys.stderr)
            return 1
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
