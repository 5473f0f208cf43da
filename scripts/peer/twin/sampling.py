"""Seeds and batch order exactly as Ssl draws them, so the twin trains on the same images per step.

derive() is Host.CSharp/Data/Seeds.Derive (SplitMix64). DotNetRandom is .NET's System.Random with a
seed (its Net5CompatSeedImpl, Knuth's subtractive generator), whose Shuffle is the Fisher-Yates
shuffle BatchSampler.Order uses; batch_order() is BatchSampler.Order.
"""

_MASK64 = (1 << 64) - 1
_INT_MAX = 2**31 - 1


def derive(seed: int, stream: int) -> int:
    """A 31-bit seed from a run seed and a stream number (Seeds.Derive)."""
    z = (seed + 0x9E3779B97F4A7C15 * (stream + 1)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z & 0x7FFFFFFF


def _int32(x: int) -> int:
    return ((x + 2**31) % 2**32) - 2**31


class DotNetRandom:
    """System.Random(seed): the same numbers .NET draws for the same seed."""

    def __init__(self, seed: int):
        subtraction = _INT_MAX if seed == -(2**31) else abs(seed)
        mj = _int32(161803398 - subtraction)
        table = [0] * 56
        table[55] = mj
        mk = 1
        ii = 0
        for _ in range(1, 55):
            ii += 21
            if ii >= 55:
                ii -= 55
            table[ii] = mk
            mk = _int32(mj - mk)
            if mk < 0:
                mk += _INT_MAX
            mj = table[ii]
        for _ in range(1, 5):
            for i in range(1, 56):
                n = i + 30
                if n >= 55:
                    n -= 55
                table[i] = _int32(table[i] - table[1 + n])
                if table[i] < 0:
                    table[i] += _INT_MAX
        self._table = table
        self._next = 0
        self._nextp = 21

    def _sample(self) -> int:
        a = self._next + 1
        if a >= 56:
            a = 1
        b = self._nextp + 1
        if b >= 56:
            b = 1
        value = self._table[a] - self._table[b]
        if value == _INT_MAX:
            value -= 1
        if value < 0:
            value += _INT_MAX
        self._table[a] = value
        self._next, self._nextp = a, b
        return value

    def next(self, low: int, high: int) -> int:
        """An integer in [low, high) (Random.Next(int, int) for ranges below 2^31)."""
        return int(self._sample() * (1.0 / _INT_MAX) * (high - low)) + low

    def shuffle(self, values: list) -> None:
        """Random.Shuffle: Fisher-Yates from the front."""
        n = len(values)
        for i in range(n - 1):
            j = self.next(i, n)
            if j != i:
                values[i], values[j] = values[j], values[i]


def batch_order(count: int, seed: int, epoch: int) -> list:
    """BatchSampler.Order: the example order of an epoch, a permutation of 0..count-1."""
    order = list(range(count))
    DotNetRandom(derive(seed, epoch)).shuffle(order)
    return order


def label_split(labels: list, per_class: int, seed: int, classes: int):
    """LabelSplitter.Draw: per class, its members shuffled with one System.Random(derive(seed, 0x5EED))
    and the first per_class kept; (labelled, pool), both ascending training-set indices."""
    random = DotNetRandom(derive(seed, 0x5EED))
    labelled = []
    for c in range(classes):
        members = [i for i, label in enumerate(labels) if label == c]
        if len(members) < per_class:
            raise ValueError(f"--labels: expected at most {len(members)} per class (class {c} has {len(members)} examples), found {per_class}")
        random.shuffle(members)
        labelled.extend(members[:per_class])
    labelled.sort()
    chosen = set(labelled)
    return labelled, [i for i in range(len(labels)) if i not in chosen]
