"""Evaluation: sample quality from features (FID, IS, precision/recall), the feature networks
(FID's Inception offline, a built-in classifier), tokenizer metrics and prompt accuracy.

    import imagelm.eval as ev
    ev.fid(feats_a, feats_b)                        # [N, D], [M, D] -> float
    ev.inception_score(logits)                      # [N, C] -> float (ADM's 5,000-image splits)
    ev.precision_recall(real, fake, k=3)            # -> (precision, recall)
    net = ev.InceptionFeatures()                    # the standard FID network, offline
    feats, logits = net(uint8_images)               # [N, H, W, 3] -> [N, 2048], None (no logits in default_1.pt)
    acts = net.activations(uint8_images)            # .feats [N, 2048], .logits, .spatial [N, 2023] (sFID)
    ev.evaluate_samples("samples.npz", "VIRTUAL_imagenet256_labeled.npz", net)   # what ADM's evaluator prints
"""
from imagelm.eval.batches import (load_images_npz, load_reference, save_images_npz,  # noqa: F401
                                  save_reference)
from imagelm.eval.features import (Activations, ClassifierFeatures, InceptionFeatures,  # noqa: F401
                                   default_inception_path, evaluate_samples, load_feature_net, reference_stats)
from imagelm.eval.fid import feature_stats, fid, frechet_distance, inception_score, precision_recall  # noqa: F401
from imagelm.eval.prompt import prompt_accuracy  # noqa: F401
from imagelm.eval.recon import evaluate_tokenizer, psnr_uint8, ssim_uint8  # noqa: F401

__all__ = ["fid", "frechet_distance", "feature_stats", "inception_score", "precision_recall",
           "load_images_npz", "save_images_npz", "load_reference", "save_reference",
           "Activations", "InceptionFeatures", "ClassifierFeatures", "default_inception_path", "load_feature_net",
           "reference_stats", "evaluate_samples", "prompt_accuracy",
           "evaluate_tokenizer", "psnr_uint8", "ssim_uint8"]
