"""The benchmark: explanation quality against the Shapes data set's ground-truth masks.

May import methods, io, nn and shapes; only the command line imports it.

    metrics.py    pointing game, relevance mass, class sensitivity, deletion / insertion, rank correlations
    benchmark.py  the run: data, every method's metrics, the FBI sweep, the randomisation cascade
    report.py     its Markdown tables, results.json and figures
    workers.py    the tasks on worker processes, with the cores shared out between them
"""
