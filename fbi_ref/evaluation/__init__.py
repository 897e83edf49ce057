"""The benchmark: explanation quality against the Shapes data set's ground-truth masks.

May import figures, methods, io, nn and shapes; only the command line imports it.

    metrics.py    pointing game (and class-conditional), relevance mass, class sensitivity, deletion /
                  insertion, rank correlations, the centre and random baselines, bootstrap intervals
    selection.py  FBI's settings chosen on the validation set by a stated rule (k x tau, then every option)
    benchmark.py  the run: data, every method's metrics with wrong-class controls, intervals, the
                  randomisation cascade and its verdict, paired comparisons with FBI
    report.py     its Markdown tables, results.json and figures (drawn with fbi_ref.figures' panels)
    workers.py    the tasks on worker processes, with the cores shared out between them
    scheduler.py  a data set's batches as tasks: the local pool, or a Dask cluster (the optional extra)
    voc.py        TorchRay's pointing game on a PASCAL VOC-style folder (fbi-ref evaluate --dataset)
"""
