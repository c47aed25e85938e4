"""Models: the plug-in protocol a stage's variant implements (`builder`) and the zoo that implements it for IPA's
pipelines (torchvision in `zoo`, transformers in `hf`, YOLOv5 in `yolo`, Segment Anything in `sam`), with what
they take: speech features (`audio`), texts (`corpus`) and sample inputs (`samples`)."""
