"""Evaluation: sample quality from features (FID, IS, precision/recall), the feature networks
(FID's Inception offline, a built-in classifier), tokenizer metrics and prompt accuracy.

    import imagelm.eval as ev
    ev.fid(feats_a, feats_b)                        # [N, D], [M, D] -> float
    ev.inception_score(logits)                      # [N, C] -> float (10 splits)
    ev.precision_recall(real, fake, k=3)            # -> (precision, recall)
    net = ev.InceptionFeatures()                    # the standard FID network, offline
    feats, logits = net(uint8_images)               # [N, H, W, 3] -> [N, 2048], None (no logits in default_1.pt)
"""
from imagelm.eval.features import (ClassifierFeatures, InceptionFeatures, default_inception_path,  # noqa: F401
                                   evaluate_samples, load_feature_net, reference_stats)
from imagelm.eval.fid import (feature_stats, fid, frechet_distance, inception_score, load_images_npz,  # noqa: F401
                              load_reference, precision_recall, save_images_npz, save_stats)
from imagelm.eval.prompt import prompt_accuracy  # noqa: F401
from imagelm.eval.recon import evaluate_tokenizer, psnr_uint8, ssim_uint8  # noqa: F401

__all__ = ["fid", "frechet_distance", "feature_stats", "inception_score", "precision_recall",
           "load_images_npz", "save_images_npz", "load_reference", "save_stats",
           "InceptionFeatures", "ClassifierFeatures", "default_inception_path", "load_feature_net",
           "reference_stats", "evaluate_samples", "prompt_accuracy",
           "evaluate_tokenizer", "psnr_uint8", "ssim_uint8"]
