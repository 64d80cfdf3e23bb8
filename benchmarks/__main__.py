"""The speed suite: the arena against the bare libraries it wraps and against the forward+backward floor, on one
trained model and the same images, interleaved and repeated (min and median of each).

    python -m benchmarks [--quick] [--device cpu|cuda] [--repeats 3] [--threads N]

Sections: attacks (arena matchup vs bare torchattacks / pyautoattack call vs k forward+backward passes), training
(one epoch through the arena vs a bare PyTorch loop; ART's Madry PGD trainer through the arena vs ART directly),
defenses (the same PGD through JPEG/BPDA and through Gaussian noise/EOT vs the bare network), cascade vs full
evaluation (undefended and PGD-trained), the opt-in runtime settings (bf16 gradients, channels-last, compile: time
and robust accuracy), and scaling (time against samples and against steps, with a fitted line).
Writes ``benchmarks/results/speed.md`` and ``speed.png``.
"""

from benchmarks.speed import main

if __name__ == "__main__":
    main()
