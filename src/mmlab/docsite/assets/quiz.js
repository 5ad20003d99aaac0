// Interactive quizzes. The page is generated from a lesson's quiz.md (mmlab/docsite/quiz.py): each
// .mmlab-q holds a list of options and the index of the right one (data-answer), counted in file order.
// The options are shuffled per learner: a seed drawn once per browser ("mmlab-learner-seed") and kept with
// the lesson's answers orders every question the same way on every visit, and no position can be learnt
// across questions. Choosing an option shows right or wrong (in words and marks, not by colour alone),
// the "Why not" note of the option chosen, the notes of the others, and the explanation. The record
// {seed, answers: {qid: option index in the file}} is kept in local storage under "mmlab-quiz:<lesson>",
// so the score and the order survive a reload. Static files only: no server, no library.
(function () {
  "use strict";

  // the page's own words: the Chinese edition's pages are <html lang="zh">
  const WORDS = {
    en: {
      mine_right: "✓ your answer: right", right_one: "✓ the right answer", mine_wrong: "✗ your answer: wrong",
      yours: "Your answer, ", right: "Right.", not_quite: "Not quite: the right option is marked ✓.",
      score: (r, n) => `Score: ${r} / ${n}`, answered: (a) => ` (${a} answered)`, all: " (all answered)",
      again: "Start again",
    },
    zh: {
      mine_right: "✓ 你的答案：正确", right_one: "✓ 正确答案", mine_wrong: "✗ 你的答案：错误",
      yours: "你的答案，", right: "回答正确。", not_quite: "不太对：正确选项已用 ✓ 标出。",
      score: (r, n) => `得分：${r} / ${n}`, answered: (a) => `（已答 ${a} 题）`, all: "（全部答完）",
      again: "重新开始",
    },
  };
  const T = WORDS[(document.documentElement.lang || "en").slice(0, 2)] || WORDS.en;

  // a 32-bit seed drawn once per browser: every lesson's record copies it, so a learner's order is stable
  function learnerSeed() {
    const k = "mmlab-learner-seed";
    try {
      const kept = Number(localStorage.getItem(k));
      if (Number.isInteger(kept) && kept > 0) return kept;
    } catch (e) {
      /* storage blocked: a seed for this visit only */
    }
    const drawn = 1 + Math.floor(Math.random() * 0xfffffffe);
    try {
      localStorage.setItem(k, String(drawn));
    } catch (e) {
      /* keep going */
    }
    return drawn;
  }

  // Fisher-Yates with mulberry32 seeded by (learner seed, question id): the same learner sees the same order
  function shuffled(items, seed, qid) {
    let h = seed >>> 0;
    for (let i = 0; i < qid.length; i++) h = Math.imul(h ^ qid.charCodeAt(i), 2654435761) >>> 0;
    const rand = () => {
      h = (h + 0x6d2b79f5) >>> 0;
      let t = h;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }

  function init() {
    const box = document.querySelector(".mmlab-score[data-quiz]");
    if (!box) return;
    const key = "mmlab-quiz:" + box.dataset.quiz;
    const questions = Array.from(document.querySelectorAll(".mmlab-q"));
    let record = {};
    try {
      record = JSON.parse(localStorage.getItem(key)) || {};
    } catch (e) {
      record = {}; // storage blocked or corrupt: the quiz still works, without memory
    }
    if (typeof record !== "object" || Array.isArray(record)) record = {};
    // an older record was the answers alone: {qid: index}
    let answers = record.answers && typeof record.answers === "object" ? record.answers : record;
    if (record.answers === undefined && record.seed !== undefined) answers = {};
    let seed = Number.isInteger(record.seed) ? record.seed : learnerSeed();
    const save = () => {
      try {
        localStorage.setItem(key, JSON.stringify({ seed: seed, answers: answers }));
      } catch (e) {
        /* storage blocked: keep going */
      }
    };
    const chosen = (q) => (Object.prototype.hasOwnProperty.call(answers, q.dataset.qid) ? answers[q.dataset.qid] : null);
    // in the order shown; each li's data-option is its index in the file, the index answers are kept by
    const options = (q) => Array.from(q.querySelectorAll(".mmlab-options li"));
    const index = (li) => Number(li.dataset.option);

    function show(q) {
      const pick = chosen(q);
      const right = Number(q.dataset.answer);
      options(q).forEach((li) => {
        const i = index(li);
        const isRight = pick !== null && i === right;
        const isWrong = pick !== null && i === pick && i !== right;
        li.classList.toggle("mmlab-right", isRight);
        li.classList.toggle("mmlab-wrong", isWrong);
        li.setAttribute("aria-disabled", String(pick !== null));
        li.querySelector(".mmlab-mark").textContent = isRight
          ? (i === pick ? T.mine_right : T.right_one)
          : isWrong ? T.mine_wrong : "";
      });
      // the chosen option's note first, marked as the learner's; the others after it, in the order shown
      const notes = q.querySelector(".mmlab-notes");
      if (notes) {
        const byOption = {};
        notes.querySelectorAll(".mmlab-note").forEach((n) => (byOption[n.dataset.option] = n));
        const order = options(q).map(index).filter((i) => byOption[i]);
        if (pick !== null && byOption[pick]) order.splice(order.indexOf(pick), 1), order.unshift(pick);
        order.forEach((i) => {
          const n = byOption[i];
          n.classList.toggle("mmlab-chosen", i === pick);
          n.querySelector(".mmlab-note-label").textContent =
            (i === pick ? T.yours : "") + letterOf(q, i) + ": ";
          notes.append(n);
        });
      }
      q.dataset.state = pick === null ? "open" : pick === right ? "right" : "wrong";
      q.querySelector(".mmlab-verdict").textContent =
        pick === null ? "" : pick === right ? T.right : T.not_quite;
    }

    const text = box.querySelector(".mmlab-score-text");
    function score() {
      const answered = questions.filter((q) => chosen(q) !== null);
      const right = answered.filter((q) => chosen(q) === Number(q.dataset.answer));
      box.dataset.right = String(right.length);
      box.dataset.answered = String(answered.length);
      text.textContent = T.score(right.length, questions.length) +
        (answered.length < questions.length ? T.answered(answered.length) : T.all);
    }

    const letterOf = (q, i) => String.fromCharCode(65 + options(q).findIndex((li) => index(li) === i));

    questions.forEach((q) => {
      const list = q.querySelector(".mmlab-options ul") || q.querySelector(".mmlab-options ol");
      options(q).forEach((li, i) => (li.dataset.option = String(i)));
      shuffled(options(q), seed, q.dataset.qid).forEach((li, shown) => {
        list.append(li); // moved into the shown order
        const letter = li.querySelector(".mmlab-letter");
        if (letter) letter.textContent = String.fromCharCode(65 + shown) + ".";
      });
      const explanation = q.querySelector(".mmlab-explanation");
      const noteEls = Array.from(explanation.querySelectorAll(".mmlab-note"));
      if (noteEls.length) {
        const notes = document.createElement("div");
        notes.className = "mmlab-notes";
        noteEls.forEach((n) => {
          const label = document.createElement("strong");
          label.className = "mmlab-note-label";
          (n.querySelector("p") || n).prepend(label);
          notes.append(n);
        });
        explanation.prepend(notes);
      }
      const verdict = document.createElement("p");
      verdict.className = "mmlab-verdict";
      verdict.setAttribute("aria-live", "polite");
      explanation.prepend(verdict);
      options(q).forEach((li) => {
        const i = index(li);
        li.tabIndex = 0;
        li.setAttribute("role", "button");
        const mark = document.createElement("span");
        mark.className = "mmlab-mark";
        li.append(mark);
        const choose = () => {
          if (chosen(q) !== null) return; // the first answer counts
          answers[q.dataset.qid] = i;
          save();
          show(q);
          score();
        };
        li.addEventListener("click", choose);
        li.addEventListener("keydown", (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            choose();
          }
        });
      });
      show(q);
    });

    const reset = document.createElement("button");
    reset.type = "button";
    reset.className = "md-button mmlab-reset";
    reset.textContent = T.again;
    reset.addEventListener("click", () => {
      answers = {};
      save();
      questions.forEach(show);
      score();
    });
    box.append(reset);
    box.dataset.seed = String(seed);
    document.body.classList.add("mmlab-quiz-js");
    score();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
