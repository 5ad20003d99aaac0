// Interactive quizzes. The page is generated from a lesson's quiz.md (mmlab/docsite/quiz.py): each
// .mmlab-q holds a list of options and the index of the right one (data-answer). Choosing an option
// shows right or wrong (in words and marks, not by colour alone) and the explanation; the choices are kept in the browser's local storage under
// "mmlab-quiz:<lesson>", so the score survives a reload. Static files only: no server, no library.
(function () {
  "use strict";

  function init() {
    const box = document.querySelector(".mmlab-score[data-quiz]");
    if (!box) return;
    const key = "mmlab-quiz:" + box.dataset.quiz;
    const questions = Array.from(document.querySelectorAll(".mmlab-q"));
    let answers = {};
    try {
      answers = JSON.parse(localStorage.getItem(key)) || {};
    } catch (e) {
      answers = {}; // storage blocked or corrupt: the quiz still works, without memory
    }
    const save = () => {
      try {
        localStorage.setItem(key, JSON.stringify(answers));
      } catch (e) {
        /* storage blocked: keep going */
      }
    };
    const chosen = (q) => (Object.prototype.hasOwnProperty.call(answers, q.dataset.qid) ? answers[q.dataset.qid] : null);
    const options = (q) => Array.from(q.querySelectorAll(".mmlab-options li"));

    function show(q) {
      const pick = chosen(q);
      const right = Number(q.dataset.answer);
      options(q).forEach((li, i) => {
        const isRight = pick !== null && i === right;
        const isWrong = pick !== null && i === pick && i !== right;
        li.classList.toggle("mmlab-right", isRight);
        li.classList.toggle("mmlab-wrong", isWrong);
        li.setAttribute("aria-disabled", String(pick !== null));
        li.querySelector(".mmlab-mark").textContent = isRight
          ? (i === pick ? "✓ your answer: right" : "✓ the right answer")
          : isWrong ? "✗ your answer: wrong" : "";
      });
      q.dataset.state = pick === null ? "open" : pick === right ? "right" : "wrong";
      q.querySelector(".mmlab-verdict").textContent =
        pick === null ? "" : pick === right ? "Right." : "Not quite: the right option is marked ✓.";
    }

    const text = box.querySelector(".mmlab-score-text");
    function score() {
      const answered = questions.filter((q) => chosen(q) !== null);
      const right = answered.filter((q) => chosen(q) === Number(q.dataset.answer));
      box.dataset.right = String(right.length);
      box.dataset.answered = String(answered.length);
      text.textContent = `Score: ${right.length} / ${questions.length}` +
        (answered.length < questions.length ? ` (${answered.length} answered)` : " (all answered)");
    }

    questions.forEach((q) => {
      const verdict = document.createElement("p");
      verdict.className = "mmlab-verdict";
      verdict.setAttribute("aria-live", "polite");
      q.querySelector(".mmlab-explanation").prepend(verdict);
      options(q).forEach((li, i) => {
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
    reset.textContent = "Start again";
    reset.addEventListener("click", () => {
      answers = {};
      save();
      questions.forEach(show);
      score();
    });
    box.append(reset);
    document.body.classList.add("mmlab-quiz-js");
    score();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
