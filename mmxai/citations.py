"""Every paper mmxai cites, once, under one BibTeX key.

Plugins name their papers with :func:`cite` (``citation = cite("li2025tam")``); the
leaderboard's ``references.bib`` collects the entries of what a table shows
(:func:`collect`: one entry per key, this module's own when a plugin brings another version
of it), with :func:`mmxai_entry` for mmxai itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BIBTEX: dict[str, str] = {
    "chen2026eagle": """@inproceedings{chen2026eagle,
  title     = {Where {MLLMs} Attend and What They Rely On: Explaining Autoregressive Token
               Generation},
  author    = {Chen, Ruoyu and Guo, Xiaoqing and Liu, Kangwei and Liang, Siyuan and
               Liu, Shiming and Zhang, Qunli and Wang, Laiyuan and Zhang, Hua and
               Cao, Xiaochun},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  pages     = {17057--17066},
  year      = {2026},
  eprint    = {2509.22496},
  archivePrefix = {arXiv}
}""",
    "li2025tam": """@inproceedings{li2025tam,
  title     = {Token Activation Map to Visually Explain Multimodal {LLMs}},
  author    = {Li, Yi and Wang, Hualiang and Ding, Xinpeng and Wang, Haonan and Li, Xiaomeng},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025},
  eprint    = {2506.23270},
  archivePrefix = {arXiv}
}""",
    "nostalgebraist2020logitlens": """@misc{nostalgebraist2020logitlens,
  title        = {interpreting {GPT}: the logit lens},
  author       = {nostalgebraist},
  year         = {2020},
  howpublished = {LessWrong},
  url          = {https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens}
}""",
    "zhou2016cam": """@inproceedings{zhou2016cam,
  title     = {Learning Deep Features for Discriminative Localization},
  author    = {Zhou, Bolei and Khosla, Aditya and Lapedriza, Agata and Oliva, Aude
               and Torralba, Antonio},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}""",
    "liang2025intramodal": """@article{liang2025intramodal,
  title   = {Explaining Multimodal {LLMs} via Intra-Modal Token Interactions},
  author  = {Liang, Jiawei and Chen, Ruoyu and Jiao, Xianghao and Liang, Siyuan and
             Liu, Shiming and Zhang, Qunli and Hu, Zheng and Cao, Xiaochun},
  journal = {arXiv preprint arXiv:2509.22415},
  year    = {2025}
}""",
    "selvaraju2017gradcam": """@inproceedings{selvaraju2017gradcam,
  title = {Grad-{CAM}: Visual Explanations from Deep Networks via Gradient-Based Localization},
  author = {Selvaraju, Ramprasaath R. and Cogswell, Michael and Das, Abhishek and
            Vedantam, Ramakrishna and Parikh, Devi and Batra, Dhruv},
  booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages = {618--626},
  year = {2017}
}""",
    "abnar2020quantifying": """@inproceedings{abnar2020quantifying,
  title = {Quantifying Attention Flow in Transformers},
  author = {Abnar, Samira and Zuidema, Willem},
  booktitle = {Proceedings of the 58th Annual Meeting of the Association for Computational
               Linguistics (ACL)},
  pages = {4190--4197},
  year = {2020},
  doi = {10.18653/v1/2020.acl-main.385}
}""",
    "vaswani2017attention": """@inproceedings{vaswani2017attention,
  title = {Attention Is All You Need},
  author = {Vaswani, Ashish and Shazeer, Noam and Parmar, Niki and Uszkoreit, Jakob and
            Jones, Llion and Gomez, Aidan N. and Kaiser, Lukasz and Polosukhin, Illia},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume = {30},
  year = {2017}
}""",
    "adebayo2018sanity": """@inproceedings{adebayo2018sanity,
  title = {Sanity Checks for Saliency Maps},
  author = {Adebayo, Julius and Gilmer, Justin and Muelly, Michael and Goodfellow, Ian and
            Hardt, Moritz and Kim, Been},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume = {31},
  year = {2018}
}""",
    "judd2009learning": """@inproceedings{judd2009learning,
  title = {Learning to Predict Where Humans Look},
  author = {Judd, Tilke and Ehinger, Krista and Durand, Fr{\\'e}do and Torralba, Antonio},
  booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages = {2106--2113},
  year = {2009}
}""",
    "ali2022xai": """@inproceedings{ali2022xai,
  title = {{XAI} for Transformers: Better Explanations through Conservative Propagation},
  author = {Ali, Ameen and Schnake, Thomas and Eberle, Oliver and Montavon, Gr{\\'e}goire and
            M{\\"u}ller, Klaus-Robert and Wolf, Lior},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning (ICML)},
  series = {PMLR},
  volume = {162},
  pages = {435--451},
  year = {2022}
}""",
    "achtibat2024attnlrp": """@inproceedings{achtibat2024attnlrp,
  title = {{AttnLRP}: Attention-Aware Layer-Wise Relevance Propagation for Transformers},
  author = {Achtibat, Reduan and Hatefi, Sayed Mohammad Vakilzadeh and Dreyer, Maximilian and
            Jain, Aakriti and Wiegand, Thomas and Lapuschkin, Sebastian and Samek, Wojciech},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  series = {PMLR},
  volume = {235},
  pages = {135--168},
  year = {2024}
}""",
    "petsiuk2018rise": """@inproceedings{petsiuk2018rise,
  title     = {{RISE}: Randomized Input Sampling for Explanation of Black-box Models},
  author    = {Petsiuk, Vitali and Das, Abir and Saenko, Kate},
  booktitle = {British Machine Vision Conference (BMVC)},
  year      = {2018}
}""",
    "lin2014coco": """@inproceedings{lin2014coco,
  title     = {Microsoft {COCO}: Common Objects in Context},
  author    = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and
               Perona, Pietro and Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2014}
}""",
    "chen2015cococaptions": """@article{chen2015cococaptions,
  title   = {Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author  = {Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and
             Gupta, Saurabh and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal = {arXiv preprint arXiv:1504.00325},
  year    = {2015}
}""",
    "rasheed2024glamm": """@inproceedings{rasheed2024glamm,
  title     = {{GLaMM}: Pixel Grounding Large Multimodal Model},
  author    = {Rasheed, Hanoona and Maaz, Muhammad and Shaji, Sahal and Shaker, Abdelrahman and
               Khan, Salman and Cholakkal, Hisham and Anwer, Rao M. and Xing, Eric and
               Yang, Ming-Hsuan and Khan, Fahad S.},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  year      = {2024}
}""",
    "zhou2024openpsg": """@inproceedings{zhou2024openpsg,
  title     = {{OpenPSG}: Open-set Panoptic Scene Graph Generation via Large Multimodal Models},
  author    = {Zhou, Zijian and Zhu, Zheng and Caesar, Holger and Shi, Miaojing},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}""",
    "sundararajan2017axiomatic": """@inproceedings{sundararajan2017axiomatic,
  title     = {Axiomatic Attribution for Deep Networks},
  author    = {Sundararajan, Mukund and Taly, Ankur and Yan, Qiqi},
  booktitle = {Proceedings of the 34th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {70},
  pages     = {3319--3328},
  year      = {2017}
}""",
    "smilkov2017smoothgrad": """@article{smilkov2017smoothgrad,
  title   = {{SmoothGrad}: removing noise by adding noise},
  author  = {Smilkov, Daniel and Thorat, Nikhil and Kim, Been and Vi{\\'e}gas, Fernanda and
             Wattenberg, Martin},
  journal = {arXiv preprint arXiv:1706.03825},
  year    = {2017}
}""",
    "shrikumar2016blackbox": """@article{shrikumar2016blackbox,
  title   = {Not Just a Black Box: Learning Important Features Through Propagating
             Activation Differences},
  author  = {Shrikumar, Avanti and Greenside, Peyton and Shcherbina, Anna and
             Kundaje, Anshul},
  journal = {arXiv preprint arXiv:1605.01713},
  year    = {2016}
}""",
    "zeiler2014occlusion": """@inproceedings{zeiler2014occlusion,
  title     = {Visualizing and Understanding Convolutional Networks},
  author    = {Zeiler, Matthew D. and Fergus, Rob},
  booktitle = {Computer Vision -- ECCV 2014},
  series    = {Lecture Notes in Computer Science},
  volume    = {8689},
  pages     = {818--833},
  year      = {2014}
}""",
    "lundberg2017shap": """@inproceedings{lundberg2017shap,
  title     = {A Unified Approach to Interpreting Model Predictions},
  author    = {Lundberg, Scott M. and Lee, Su-In},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  volume    = {30},
  pages     = {4765--4774},
  year      = {2017}
}""",
    "ribeiro2016lime": """@inproceedings{ribeiro2016lime,
  title     = {``Why Should {I} Trust You?'': Explaining the Predictions of Any Classifier},
  author    = {Ribeiro, Marco Tulio and Singh, Sameer and Guestrin, Carlos},
  booktitle = {Proceedings of the 22nd ACM SIGKDD International Conference on Knowledge
               Discovery and Data Mining (KDD)},
  pages     = {1135--1144},
  year      = {2016}
}""",
    "achanta2012slic": """@article{achanta2012slic,
  title   = {{SLIC} Superpixels Compared to State-of-the-Art Superpixel Methods},
  author  = {Achanta, Radhakrishna and Shaji, Appu and Smith, Kevin and Lucchi, Aurelien and
             Fua, Pascal and S{\\"u}sstrunk, Sabine},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume  = {34},
  number  = {11},
  pages   = {2274--2282},
  year    = {2012}
}""",
}


def cite(*keys: str) -> str:
    """The BibTeX entries of ``keys``, in order, separated by a blank line."""
    return "\n\n".join(BIBTEX[key] for key in keys)


def mmxai_entry(versions: Iterable[str] = ()) -> str:
    """The BibTeX entry of mmxai itself (key ``mmxai``), naming the ``versions`` that
    produced a table."""
    named = ", ".join(sorted(set(versions)))
    note = f"Python package, version {named}" if named else "Python package"
    return ("@misc{mmxai,\n"
            "  title  = {{mmxai}: what a multimodal {LLM} looked at for each generated token},\n"
            "  author = {{mmxai developers}},\n"
            f"  note   = {{{note}}}\n"
            "}")


_ENTRY = re.compile(r"@\s*\w+\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)


def entries(text: str) -> dict[str, str]:
    """Split BibTeX text into {key: entry} (a key given twice: its first entry)."""
    starts = [m.start() for m in _ENTRY.finditer(text)] + [len(text)]
    found: dict[str, str] = {}
    for start, end in zip(starts, starts[1:], strict=False):
        found.setdefault(_ENTRY.match(text, start).group(1), text[start:end].strip())
    return found


def _same(a: str, b: str) -> bool:
    return a.split() == b.split()


def collect(citations: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """One entry per key from ``(source, BibTeX text)`` pairs, and a line for each key that
    came in several versions.

    Which version a key keeps never depends on the order of names: this module's own entry
    when it holds the key, else the first source's (callers pass sources in a fixed order).
    """
    chosen: dict[str, str] = {}
    versions: dict[str, dict[str, list[str]]] = {}  # key -> entry -> sources
    for source, text in citations:
        for key, entry in entries(text).items():
            seen = versions.setdefault(key, {})
            same = next((e for e in seen if _same(e, entry)), entry)
            seen.setdefault(same, []).append(source)
            chosen.setdefault(key, BIBTEX.get(key, entry))
    notes = []
    for key, seen in versions.items():
        if len(seen) > 1:
            kept = next((s for e, s in seen.items() if _same(e, chosen[key])), None)
            which = f"the one from {', '.join(kept)}" if kept else "mmxai's own"
            given = "; ".join(", ".join(s) for s in seen.values())
            notes.append(f"BibTeX key {key!r} comes in {len(seen)} versions (from {given}); "
                         f"kept {which}")
    return chosen, notes
