"""IAENet training machinery, used by the ``train`` stage (:mod:`pipeline.train`).

* ``params``: the ``train`` section of params.yaml (:class:`~pipeline.learning.params.TrainParams`);
* ``presets``: model presets (``configs/iaenet_*.yaml``) read and overridden by params;
* ``recipe``: the resolved training recipe, the LR schedule, fold seeds;
* ``windows``, ``postprocess``: windows and labels; predictions from network outputs;
* ``data``: the stage's inputs read and put on the device;
* ``step``, ``loop``: one training step (eager or a CUDA graph); the loop of one model;
* ``folds``: one fold, folds in one process, groups of folds in several;
* ``timings``: the per-model timing records (``data/<ds>/train_timings.jsonl``).
"""
