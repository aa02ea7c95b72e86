"""Benchmark: bondexp.pricing against a QuantLib loop, full analytics including the yield solve.

Both sides start from clean prices and compute the yield, then clean and dirty price, accrued,
Macaulay and modified duration and convexity at that yield. bondexp prices every bond; the
QuantLib loop prices a subsample and its rate is scaled to the full count (said in the output).
The agreement between the two is measured on that subsample.

Run: ``python benchmarks/pricing.py [--n-bonds 100000] [--n-quantlib 5000] [--repeat 3]``
"""

import argparse
import time

import numpy as np
import QuantLib as ql

from bondexp.pricing import price_from_yield, yield_from_price

QL_FREQUENCY = {1: ql.Annual, 2: ql.Semiannual, 4: ql.Quarterly, 12: ql.Monthly}
ANALYTICS = ("clean_price", "dirty_price", "accrued", "macaulay_duration", "modified_duration", "convexity")


def mixed_bonds(n_bonds: int, seed: int = 0):
    """Bonds of all frequencies and both day counts, 1 month to 40 years left, a third maturing at month end."""
    rng = np.random.default_rng(seed)
    settlement = np.datetime64("2024-01-02") + rng.integers(0, 3 * 365, n_bonds)
    maturity = settlement + rng.integers(30, 40 * 365, n_bonds)
    month_end = (maturity.astype("datetime64[M]") + 1).astype("datetime64[D]") - 1
    maturity = np.where(rng.random(n_bonds) < 1 / 3, month_end, maturity)
    issue = settlement - rng.integers(0, 10 * 365, n_bonds)
    bonds = {
        "issue_date": issue,
        "maturity_date": maturity,
        "coupon_rate": rng.uniform(0.0, 0.1, n_bonds),
        "frequency": rng.choice([1, 2, 4, 12], n_bonds),
        "day_count": rng.integers(0, 2, n_bonds),
    }
    ytm = rng.uniform(-0.005, 0.15, n_bonds)
    return bonds, settlement, price_from_yield(bonds, settlement, ytm)["clean_price"]


def bondexp_analytics(bonds, settlement, clean):
    ytm = yield_from_price(bonds, settlement, clean)
    return ytm, price_from_yield(bonds, settlement, ytm)


def quantlib_analytics(bonds, settlement, clean, index):
    """The same figures from QuantLib, one bond at a time: (yields, rows of ANALYTICS)."""
    ytm, out = np.empty(index.size), np.empty((index.size, len(ANALYTICS)))
    for k, i in enumerate(index):
        issue = ql.DateParser.parseISO(str(bonds["issue_date"][i]))
        maturity = ql.DateParser.parseISO(str(bonds["maturity_date"][i]))
        day = ql.DateParser.parseISO(str(settlement[i]))
        frequency = QL_FREQUENCY[int(bonds["frequency"][i])]
        schedule = ql.Schedule(
            issue, maturity, ql.Period(frequency), ql.NullCalendar(), ql.Unadjusted, ql.Unadjusted, ql.DateGeneration.Backward, True
        )
        if bonds["day_count"][i] == 0:
            day_count = ql.Thirty360(ql.Thirty360.BondBasis)
        else:
            day_count = ql.ActualActual(ql.ActualActual.ISMA, schedule)
        bond = ql.FixedRateBond(0, 100.0, schedule, [float(bonds["coupon_rate"][i])], day_count, ql.Unadjusted, 100.0, issue)
        ql.Settings.instance().evaluationDate = day
        price = ql.BondPrice(float(clean[i]), ql.BondPrice.Clean)
        ytm[k] = ql.BondFunctions.bondYield(bond, price, day_count, ql.Compounded, frequency, day, 1e-12, 100)
        rate = ql.InterestRate(ytm[k], day_count, ql.Compounded, frequency)
        clean_k = ql.BondFunctions.cleanPrice(bond, rate, day)
        accrued = bond.accruedAmount(day)
        out[k] = (
            clean_k,
            clean_k + accrued,
            accrued,
            ql.BondFunctions.duration(bond, rate, ql.Duration.Macaulay, day),
            ql.BondFunctions.duration(bond, rate, ql.Duration.Modified, day),
            ql.BondFunctions.convexity(bond, rate, day),
        )
    return ytm, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-bonds", type=int, default=100_000, help="bonds priced by bondexp")
    parser.add_argument("--n-quantlib", type=int, default=5_000, help="subsample priced by the QuantLib loop")
    parser.add_argument("--repeat", type=int, default=3, help="bondexp runs; the median is reported")
    args = parser.parse_args()

    bonds, settlement, clean = mixed_bonds(args.n_bonds)
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        ytm, ours = bondexp_analytics(bonds, settlement, clean)
        seconds.append(time.perf_counter() - start)
    ours_rate = args.n_bonds / float(np.median(seconds))

    index = np.random.default_rng(1).choice(args.n_bonds, size=min(args.n_quantlib, args.n_bonds), replace=False)
    start = time.perf_counter()
    ql_ytm, theirs = quantlib_analytics(bonds, settlement, clean, index)
    ql_rate = index.size / (time.perf_counter() - start)

    flows = np.ceil((bonds["maturity_date"] - settlement).astype(int) / 365.25 * bonds["frequency"]).mean()
    print(
        f"{args.n_bonds:,} mixed bonds (~{flows:.0f} cash flows each): yield from clean price, "
        f"then clean, dirty, accrued, Macaulay and modified duration, convexity"
    )
    print(f"{'':<10}{'bonds/s':>12}  note")
    print(f"{'bondexp':<10}{ours_rate:>12,.0f}  median of {args.repeat} runs over all {args.n_bonds:,} bonds")
    print(f"{'QuantLib':<10}{ql_rate:>12,.0f}  loop timed on a subsample of {index.size:,} bonds, rate scaled")
    print(f"speedup: {ours_rate / ql_rate:.0f}x (target >= 50x)")
    print(f"max abs disagreement on the {index.size:,}-bond subsample:")
    print(f"  {'ytm':<18}{np.abs(ytm[index] - ql_ytm).max():.2e}")
    for column, key in enumerate(ANALYTICS):
        diff = np.abs(ours[key][index] - theirs[:, column])
        if key == "convexity":
            print(f"  {key:<18}{(diff / np.abs(theirs[:, column])).max():.2e} (relative)")
        else:
            print(f"  {key:<18}{diff.max():.2e}")


if __name__ == "__main__":
    main()
