/**
 * wxlogin.js: the "scan with WeChat to log in" widget of wxlogin. One ES module, no
 * dependencies, no build step.
 *
 *   import { mount } from 'https://wxlogin.example.com/wxlogin.js';
 *   const login = mount(document.getElementById('login'), {
 *     getToken: () => fetch('/my/wxlogin-token').then((r) => r.text()), // or token: '…'
 *     onLogin: async ({ userId, event, login_token }) => { ... }, // verify login_token server-side
 *   });
 *   // login.refresh(), login.destroy(), login.setLang('en')
 *
 * Options: base (the wxlogin URL; default: where this file was loaded from), token or getToken
 * (called for each new QR code, and once more after a 401), lang ('zh' default, 'en'), labels
 * (overrides, flat or per language: {expired: '…'} or {en: {expired: '…'}}), size (px),
 * onLogin(result) (may return a promise: the widget shows "verifying" until it settles, then
 * "logged in", or an error if it rejects), onError(error: Error with .code and .status),
 * firstEventTimeout (ms to wait for the stream's first event before showing an error, e.g. when
 * a proxy buffers the stream; default 15000, 0: wait forever), showOpenid (show the visitor's
 * openid when logged in; default false), layout ('auto' default: a touch device with a screen up
 * to 1024 px wide is a phone; 'phone' or 'desktop' to decide), inWeChat (true / false; default:
 * the user agent names MicroMessenger, WeChat's own browser).
 *
 * Login codes (LOGIN_MODES with code): a desktop shows the code under the QR code; a phone shows
 * the code first, large, with a copy button, the steps and the account's follow QR if the server
 * sends one, then the QR with a PNG to save and scan from WeChat's album; WeChat's browser shows
 * the QR with a long-press hint and the code as the fallback. A code-only stream shows the code
 * (and the account's follow QR) without a QR code.
 *
 * Login inside WeChat (LOGIN_MODES with oauth): inside WeChat's browser, when the server says the
 * account allows it, the widget shows "在微信中一键登录" (button.wxlogin-oauth) first, above the
 * QR code and the code. It sends the page to wxlogin's /oauth/authorize (options account,
 * default 'default', which also picks the account of the stream and the status polls, and returnTo, default this page's URL without its fragment; its origin must
 * be in OAUTH_RETURN_ORIGINS); WeChat names the visitor and wxlogin brings the page back with a
 * one-time handle in the fragment (#wxlogin_oauth=…). On load the widget takes the handle out of
 * the URL, trades it at POST /oauth/result and calls onLogin with {userId, event: 'oauth',
 * login_token} (and unionId when WeChat gives one), as after a scan. A declined or failed
 * authorization comes back with #wxlogin_oauth_error=…: the widget removes it and shows the QR.
 *
 * Stable hooks: the element's data-wxlogin-state is loading | qr | verifying | done | expired |
 * error; the image is img.wxlogin-qr, the refresh / retry button button.wxlogin-refresh, the
 * status line .wxlogin-status, the hint .wxlogin-hint, the countdown .wxlogin-timer, the user
 * line .wxlogin-user; the code .wxlogin-code (in .wxlogin-codebox, with .wxlogin-code-label,
 * the copy button button.wxlogin-copy, data-copied once copied, the steps ol.wxlogin-steps, the
 * follow QR .wxlogin-account), the PNG link a.wxlogin-download, the album note .wxlogin-qrnote,
 * the long-press hint .wxlogin-longpress; data-wxlogin-layout is desktop | phone | wechat. Each change dispatches a bubbling 'wxlogin:state' event, detail {state,
 * scene}. Colours come from the CSS variables --wxlogin-accent (brand green: spinner, progress,
 * success icon), --wxlogin-accent-text (button, success text), --wxlogin-error (error icon and
 * text), set on the element or any ancestor; the size option sets --wxlogin-size. Styles are adopted with zero specificity (:where), so any rule of the page wins
 * (except [hidden], which stays hidden).
 *
 * The stream's event id (`<scene>.<key>.0`) is its secret: the browser sends it back when it
 * reconnects, polling sends it as the Last-Event-ID header, and while a code is shown it is kept
 * in sessionStorage (per tab, per wxlogin base) so that a reload of the page resumes the same
 * code, and a scan made meanwhile still logs the page in. It is dropped on login, on expiry,
 * refresh() and destroy(); it goes into no URL but that of the resuming /sse request, and never
 * into the console.
 */

const LABELS = {
  zh: {
    loading: '正在生成二维码…',
    alt: '微信登录二维码',
    scan: '请使用微信扫一扫登录',
    hint: '扫码后在微信中确认关注即可登录',
    left: '{time} 后过期',
    reconnecting: '连接中断，正在恢复…',
    verifying: '正在验证登录…',
    done: '登录成功',
    doneNew: '登录成功，感谢关注',
    user: 'OpenID：{user}',
    expired: '二维码已过期，点击刷新',
    imgFail: '二维码加载失败，点击重试',
    token: '登录凭证无效，请刷新页面后重试',
    busy: '服务繁忙，稍后自动重试',
    network: '无法连接登录服务，稍后自动重试',
    failed: '登录服务出错 (HTTP {status})',
    retryIn: '{s} 秒后重试',
    retry: '重试',
    loginFailed: '登录未完成，请重新扫码',
    silent: '登录服务没有响应，请点击重试',
    orCode: '或在公众号内发送验证码',
    codeOnly: '请在微信中向公众号发送验证码',
    sendCode: '把验证码发送到公众号即可登录',
    codeSr: '验证码 {digits}',
    copy: '复制验证码',
    copied: '已复制',
    copyFail: '复制失败，请长按验证码手动复制',
    step1: '复制验证码',
    step2: '打开微信，进入公众号',
    step3: '把验证码发送给公众号，本页会自动登录',
    account: '还没关注？先扫码关注公众号',
    accountAlt: '公众号二维码',
    save: '保存图片后在微信里扫一扫（从相册选择）',
    download: '保存二维码图片',
    longPress: '长按二维码，识别后关注公众号即可登录',
    wechatFallback: '识别不了？在公众号内发送验证码',
    oauth: '在微信中一键登录',
    oauthOr: '或扫码 / 发送验证码登录',
    oauthFailed: '微信授权未完成，请扫码或发送验证码登录',
  },
  en: {
    loading: 'Generating QR code…',
    alt: 'WeChat login QR code',
    scan: 'Scan with WeChat to log in',
    hint: 'Scan, then follow the account in WeChat to log in',
    left: 'Expires in {time}',
    reconnecting: 'Connection lost, recovering…',
    verifying: 'Verifying login…',
    done: 'Logged in',
    doneNew: 'Logged in, thanks for following',
    user: 'OpenID: {user}',
    expired: 'QR code expired, click to refresh',
    imgFail: 'QR code failed to load, click to retry',
    token: 'Invalid login token, reload the page and try again',
    busy: 'Service busy, retrying shortly',
    network: 'Cannot reach the login service, retrying shortly',
    failed: 'Login service error (HTTP {status})',
    retryIn: 'Retrying in {s} s',
    retry: 'Retry',
    loginFailed: 'Login was not completed, please scan again',
    silent: 'The login service is not responding, click to retry',
    orCode: 'Or send this code to the account in WeChat:',
    codeOnly: 'Send this code to the account in WeChat',
    sendCode: 'Send this code to the account in WeChat to log in',
    codeSr: 'Login code {digits}',
    copy: 'Copy code',
    copied: 'Copied',
    copyFail: 'Copy failed, long-press the code to copy it',
    step1: 'Copy the code',
    step2: 'Open WeChat and go to the account',
    step3: 'Send the code to the account; this page logs in by itself',
    account: 'Not following yet? Scan to follow the account first',
    accountAlt: 'The account\'s QR code',
    save: 'Save the image, then in WeChat scan it from the album',
    download: 'Save QR code image',
    longPress: 'Long-press the QR code and follow the account to log in',
    wechatFallback: 'Does not work? Send the code to the account',
    oauth: 'Log in with WeChat',
    oauthOr: 'Or scan the QR code / send the code',
    oauthFailed: 'WeChat did not authorize the login; scan the QR code or send the code',
  },
};

const CSS = `
:where(.wxlogin){--wxlogin-size:200px;display:block;text-align:center}
:where(.wxlogin-box){display:flex;flex-direction:column;align-items:center;outline:none}
:where(.wxlogin-frame){position:relative;box-sizing:border-box;width:var(--wxlogin-size);max-width:100%;aspect-ratio:1/1;padding:6px;border-radius:12px;background:#fff;border:1px solid #00000020;display:grid;place-items:center;overflow:hidden}
:where(.wxlogin-qr){grid-area:1/1;width:100%;height:100%;display:block;transition:opacity .2s,filter .2s}
:where(.wxlogin[data-wxlogin-state=expired] .wxlogin-qr,.wxlogin[data-wxlogin-state=error] .wxlogin-qr){opacity:.08;filter:blur(2px)}
:where(.wxlogin-spin){grid-area:1/1;width:34px;height:34px;border-radius:50%;border:3px solid #dfe3e8;border-top-color:var(--wxlogin-accent,#07c160);animation:wxlogin-r .9s linear infinite}
@keyframes wxlogin-r{to{transform:rotate(360deg)}}
@media (prefers-reduced-motion:reduce){:where(.wxlogin-spin){animation-duration:3s}:where(.wxlogin-qr){transition:none}}
:where(.wxlogin-center){position:absolute;inset:0;display:flex;flex-direction:column;align-items:center;justify-content:center;gap:14px;padding:10%}
:where(.wxlogin-icon){display:flex;justify-content:center;width:36%}
:where(.wxlogin[data-wxlogin-state=done] .wxlogin-icon){width:42%}
:where(.wxlogin-icon>svg){width:100%;height:auto}
:where(.wxlogin-refresh){font:inherit;font-size:14px;font-weight:600;line-height:1.35;color:#fff;background:var(--wxlogin-accent-text,#06803f);border:0;border-radius:10px;padding:10px 14px;min-height:44px;cursor:pointer;box-shadow:0 2px 8px #0000002e}
:where(.wxlogin-refresh:hover){filter:brightness(1.08)}
:where(.wxlogin-refresh:focus-visible){outline:3px solid #1a73e8;outline-offset:2px}
:where(.wxlogin-status){margin:12px 0 0;font-weight:600;min-height:1.5em;overflow-wrap:anywhere}
:where(.wxlogin[data-wxlogin-state=done] .wxlogin-status){color:var(--wxlogin-accent-text,#06803f)}
:where(.wxlogin[data-wxlogin-state=error] .wxlogin-status){color:var(--wxlogin-error,#c62828)}
:where(.wxlogin[data-wxlogin-state=done] .wxlogin-icon){color:var(--wxlogin-accent,#07c160)}
:where(.wxlogin[data-wxlogin-state=error] .wxlogin-icon){color:var(--wxlogin-error,#c62828)}
:where(.wxlogin-hint,.wxlogin-timer,.wxlogin-user){margin:4px 0 0;font-size:13px;opacity:.75;overflow-wrap:anywhere}
:where(.wxlogin-timer){display:flex;align-items:center;justify-content:center;gap:8px;width:var(--wxlogin-size);max-width:100%;font-variant-numeric:tabular-nums}
:where(.wxlogin-bar){flex:1;height:4px;border-radius:4px;background:#8882;overflow:hidden}
:where(.wxlogin-bar>span){display:block;height:100%;background:var(--wxlogin-accent,#07c160);transition:width .5s linear}
:where(.wxlogin-user){font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
:where(.wxlogin-sr){position:absolute;width:1px;height:1px;margin:-1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
:where(.wxlogin-codebox){display:flex;flex-direction:column;align-items:center;gap:6px;margin:12px 0 0;width:100%}
:where(.wxlogin[data-wxlogin-layout=phone] .wxlogin-codebox,.wxlogin-codebox.wxlogin-only){order:-1;margin:0 0 16px}
:where(.wxlogin-code-label){margin:0;font-size:13px;opacity:.8}
:where(.wxlogin-code){font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:22px;font-weight:700;letter-spacing:.18em;font-variant-numeric:tabular-nums;user-select:all;-webkit-user-select:all}
:where(.wxlogin-codebox.wxlogin-large .wxlogin-code){font-size:34px;letter-spacing:.22em}
:where(.wxlogin-copy,.wxlogin-download){font:inherit;font-size:14px;font-weight:600;color:var(--wxlogin-accent-text,#06803f);background:transparent;border:1px solid currentColor;border-radius:10px;padding:8px 14px;min-height:44px;cursor:pointer;text-decoration:none;display:inline-flex;align-items:center;justify-content:center;box-sizing:border-box}
:where(.wxlogin-copy:focus-visible,.wxlogin-download:focus-visible){outline:3px solid #1a73e8;outline-offset:2px}
:where(.wxlogin-copy[data-copied]){color:#fff;background:var(--wxlogin-accent-text,#06803f)}
:where(.wxlogin-steps){margin:4px 0 0;padding:0 0 0 1.4em;text-align:left;font-size:13px}
:where(.wxlogin-account){display:flex;flex-direction:column;align-items:center;gap:4px;margin:8px 0 0;font-size:13px}
:where(.wxlogin-account>img){width:140px;height:140px}
:where(.wxlogin-qrnote,.wxlogin-longpress){margin:8px 0 0;font-size:13px}
:where(.wxlogin-longpress){font-weight:600}
:where(.wxlogin-qrbox){display:flex;flex-direction:column;align-items:center;width:100%}
:where(.wxlogin-oauth){font:inherit;font-size:16px;font-weight:600;color:#fff;background:var(--wxlogin-accent,#07c160);border:0;border-radius:10px;padding:12px 20px;min-height:48px;width:var(--wxlogin-size);max-width:100%;cursor:pointer;margin:0 0 6px}
:where(.wxlogin-oauth:focus-visible){outline:3px solid #1a73e8;outline-offset:2px}
:where(.wxlogin-oauth-or){margin:0 0 12px;font-size:13px;opacity:.75}
.wxlogin [hidden]{display:none!important}
`;

const SVGNS = 'http://www.w3.org/2000/svg';
// Built with DOM calls, not innerHTML, so pages enforcing Trusted Types can use the widget.
const ICONS = {
  done: [
    ['circle', { cx: 36, cy: 36, r: 34, fill: 'currentColor' }],
    ['path', { d: 'm22 37 9 9 19-20', fill: 'none', stroke: '#fff', 'stroke-width': 6, 'stroke-linecap': 'round', 'stroke-linejoin': 'round' }],
  ],
  error: [
    ['circle', { cx: 36, cy: 36, r: 34, fill: 'currentColor' }],
    ['path', { d: 'M36 18v24', stroke: '#fff', 'stroke-width': 7, 'stroke-linecap': 'round' }],
    ['circle', { cx: 36, cy: 53, r: 4.5, fill: '#fff' }],
  ],
};

function svgIcon(doc, parts) {
  const svg = doc.createElementNS(SVGNS, 'svg');
  svg.setAttribute('viewBox', '0 0 72 72');
  svg.setAttribute('aria-hidden', 'true');
  for (const [tag, attrs] of parts) {
    const e = doc.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    svg.append(e);
  }
  return svg;
}

/** A stream that has not delivered for this long past its deadline is given up locally. */
const GRACE_MS = 10000;
const POLL_MS = 2000;

const styled = new WeakSet();
function adoptStyle(doc) {
  if (styled.has(doc)) return;
  styled.add(doc);
  try {
    // A constructed sheet needs no <style> element, which a strict CSP would refuse.
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  } catch {
    const style = doc.createElement('style');
    style.textContent = CSS;
    doc.head.append(style);
  }
}

function el(doc, tag, cls, attrs = {}) {
  const e = doc.createElement(tag);
  if (cls) e.className = cls;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function wxError(code, message, status) {
  return Object.assign(new Error(message), { code, status });
}

export function mount(element, options = {}) {
  if (!element || element.nodeType !== 1) throw new TypeError('wxlogin: mount(element, options) needs an element');
  const o = { ...options };
  const base = String(o.base || new URL('.', import.meta.url).href).replace(/\/+$/, '');
  const abs = (path) => (/^https?:\/\//.test(path) ? path : base + path);
  let lang = o.lang === 'en' ? 'en' : 'zh';
  const t = (key, vars = {}) => {
    const l = o.labels || {};
    const s = String(l[lang]?.[key] ?? l[key] ?? LABELS[lang][key] ?? LABELS.zh[key] ?? key);
    return s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
  };

  const doc = element.ownerDocument;
  adoptStyle(doc);
  const box = el(doc, 'div', 'wxlogin-box', { tabindex: '-1' });
  const frame = el(doc, 'div', 'wxlogin-frame');
  const img = el(doc, 'img', 'wxlogin-qr', { decoding: 'async', referrerpolicy: 'no-referrer' });
  const spin = el(doc, 'div', 'wxlogin-spin', { 'aria-hidden': 'true' });
  const center = el(doc, 'div', 'wxlogin-center');
  const icon = el(doc, 'div', 'wxlogin-icon', { 'aria-hidden': 'true' });
  const button = el(doc, 'button', 'wxlogin-refresh', { type: 'button' });
  const status = el(doc, 'p', 'wxlogin-status', { role: 'status', 'aria-live': 'polite' });
  const hint = el(doc, 'p', 'wxlogin-hint');
  const timer = el(doc, 'div', 'wxlogin-timer', { role: 'timer' });
  const bar = el(doc, 'div', 'wxlogin-bar', { 'aria-hidden': 'true' });
  const fill = el(doc, 'span');
  const countdown = el(doc, 'span', 'wxlogin-countdown');
  const user = el(doc, 'p', 'wxlogin-user');
  // The QR's notes: save-and-scan-from-the-album on a phone, long-press inside WeChat.
  const qrbox = el(doc, 'div', 'wxlogin-qrbox');
  const qrnote = el(doc, 'p', 'wxlogin-qrnote');
  const longpress = el(doc, 'p', 'wxlogin-longpress');
  const download = el(doc, 'a', 'wxlogin-download', { download: 'wechat-login-qr.png' });
  // The login code: read digit by digit by screen readers (the label spaces the digits).
  const codebox = el(doc, 'div', 'wxlogin-codebox');
  const codeLabel = el(doc, 'p', 'wxlogin-code-label');
  const code = el(doc, 'span', 'wxlogin-code', { role: 'img' });
  const copy = el(doc, 'button', 'wxlogin-copy', { type: 'button' });
  const copyStatus = el(doc, 'span', 'wxlogin-sr', { role: 'status', 'aria-live': 'polite' });
  const steps = el(doc, 'ol', 'wxlogin-steps');
  const stepItems = ['step1', 'step2', 'step3'].map((k) => ({ k, li: el(doc, 'li') }));
  const account = el(doc, 'figure', 'wxlogin-account');
  const accountImg = el(doc, 'img', 'wxlogin-account-qr', { decoding: 'async', referrerpolicy: 'no-referrer' });
  const accountCap = el(doc, 'figcaption');
  // Login inside WeChat's browser: first, when the account allows it.
  const oauthBtn = el(doc, 'button', 'wxlogin-oauth', { type: 'button' });
  const oauthOr = el(doc, 'p', 'wxlogin-oauth-or');
  const doneIcon = svgIcon(doc, ICONS.done);
  const errorIcon = svgIcon(doc, ICONS.error);
  bar.append(fill);
  timer.append(bar, countdown);
  center.append(icon, button);
  frame.append(img, spin, center);
  for (const { li } of stepItems) steps.append(li);
  account.append(accountImg, accountCap);
  codebox.append(codeLabel, code, copy, copyStatus, steps, account);
  qrbox.append(frame, longpress, qrnote, download);
  box.append(oauthBtn, oauthOr, qrbox, status, hint, timer, codebox, user);
  element.classList.add('wxlogin');
  element.replaceChildren(box);

  // Everything the widget knows; `gen` changes whenever a flow is abandoned, so late callbacks
  // of an old stream, probe or poll recognise themselves and do nothing.
  const S = { state: 'loading', scene: null, id: '', gen: 0, es: null, tok: '', total: 0,
    deadline: 0, retryAt: 0, user: '', isNew: false, msg: null, note: '', destroyed: false,
    code: '', account: '', copied: '', png: '', oauth: false, oauthFailed: false };
  const timers = { tick: 0, poll: 0, retry: 0, first: 0, copied: 0 };

  // Where the visitor is. A phone or tablet (touch and a narrow screen) cannot scan its own
  // screen: it gets the code first. Inside WeChat's browser a long-press on the QR opens the
  // account. Both are options, for pages that know better (and for tests).
  const inWeChat = typeof o.inWeChat === 'boolean' ? o.inWeChat
    : /MicroMessenger/i.test(String(o.userAgent ?? globalThis.navigator?.userAgent ?? ''));
  function layout() {
    if (inWeChat) return 'wechat';
    if (o.layout === 'phone' || o.layout === 'desktop') return o.layout;
    const mq = (q) => { try { return globalThis.matchMedia(q).matches; } catch { return false; } };
    const touch = (globalThis.navigator?.maxTouchPoints || 0) > 0 || mq('(pointer: coarse)');
    return touch && mq('(max-width: 1024px)') ? 'phone' : 'desktop';
  }
  const firstEventMs = o.firstEventTimeout === undefined ? 15000 : Math.max(0, Number(o.firstEventTimeout) || 0);

  // The code shown, kept across reloads of the page. Storage may be refused (privacy modes, a
  // sandboxed frame): then a reload simply shows a new code.
  const savedKey = `wxlogin:${base}`;
  function saved() {
    try {
      const v = JSON.parse(sessionStorage.getItem(savedKey) || 'null');
      if (v && v.base === base && typeof v.id === 'string' && v.id && Number(v.deadline) > Date.now()) return v.id;
      if (v) sessionStorage.removeItem(savedKey);
    } catch { /* no resume */ }
    return '';
  }
  function keep() {
    if (!S.id) return;
    try {
      sessionStorage.setItem(savedKey, JSON.stringify({ id: S.id, base, deadline: S.deadline }));
    } catch { /* no resume */ }
  }
  function forget() {
    try { sessionStorage.removeItem(savedKey); } catch { /* nothing kept */ }
  }

  function set(state, msg = null) {
    S.state = state;
    S.msg = msg;
    render();
    element.dispatchEvent(new CustomEvent('wxlogin:state', { bubbles: true, detail: { state, scene: S.scene } }));
  }

  const text = (node, s) => { if (node.textContent !== s) node.textContent = s; };

  function render() {
    if (S.destroyed) return;
    const st = S.state;
    const focused = element.contains(doc.activeElement);
    element.dataset.wxloginState = st;
    element.style.setProperty('--wxlogin-size', `${Number(o.size) > 0 ? Number(o.size) : 200}px`);
    box.lang = lang === 'en' ? 'en' : 'zh-CN';
    img.alt = t('alt');
    const hasQr = !!img.getAttribute('src');
    img.hidden = !hasQr || !['qr', 'expired'].includes(st);
    const lay = layout();
    element.dataset.wxloginLayout = lay;
    // A code-only stream has no QR to frame while it waits.
    frame.hidden = st === 'qr' && !hasQr;
    const showQr = st === 'qr' && hasQr;
    longpress.hidden = !(showQr && lay === 'wechat');
    text(longpress, t('longPress'));
    qrnote.hidden = !(showQr && lay === 'phone');
    text(qrnote, t('save'));
    download.hidden = !(showQr && lay === 'phone' && S.png);
    if (S.png && download.getAttribute('href') !== S.png) download.setAttribute('href', S.png);
    if (!S.png) download.removeAttribute('href');
    text(download, t('download'));
    const showOauth = st === 'qr' && S.oauth && lay === 'wechat';
    oauthBtn.hidden = oauthOr.hidden = !showOauth;
    text(oauthBtn, t('oauth'));
    text(oauthOr, t(S.oauthFailed ? 'oauthFailed' : 'oauthOr'));
    const showCode = st === 'qr' && !!S.code;
    codebox.hidden = !showCode;
    codebox.classList.toggle('wxlogin-large', lay !== 'desktop' || !hasQr);
    codebox.classList.toggle('wxlogin-only', !hasQr);
    const label = { wechat: 'wechatFallback', phone: 'sendCode', desktop: 'orCode' }[lay];
    text(codeLabel, !hasQr ? t('codeOnly') : t(label));
    text(code, S.code);
    code.setAttribute('aria-label', t('codeSr', { digits: S.code.split('').join(' ') }));
    copy.hidden = !showCode || lay === 'desktop';
    if (S.copied) copy.dataset.copied = ''; else delete copy.dataset.copied;
    text(copy, S.copied === 'copied' ? t('copied') : t('copy'));
    text(copyStatus, S.copied ? t(S.copied) : '');
    steps.hidden = lay !== 'phone';
    for (const { k, li } of stepItems) text(li, t(k));
    account.hidden = !S.account || (lay === 'desktop' && hasQr);
    if (S.account && accountImg.getAttribute('src') !== S.account) accountImg.src = S.account;
    accountImg.alt = t('accountAlt');
    text(accountCap, t('account'));
    spin.hidden = st !== 'loading' && st !== 'verifying';
    icon.hidden = st !== 'done' && st !== 'error';
    if (!icon.hidden) icon.replaceChildren(st === 'done' ? doneIcon : errorIcon);
    frame.setAttribute('aria-busy', String(st === 'loading' || st === 'verifying'));
    const canRetry = st === 'expired' || (st === 'error' && S.msg?.retry);
    button.hidden = !canRetry;
    center.hidden = icon.hidden && button.hidden;
    text(button, st === 'expired' ? t('expired') : S.msg?.key === 'imgFail' ? t('imgFail') : t('retry'));

    let line = '';
    if (st === 'loading') line = t('loading');
    else if (st === 'qr') line = S.note ? t(S.note) : img.getAttribute('src') ? t('scan') : t('codeOnly');
    else if (st === 'verifying') line = t('verifying');
    else if (st === 'done') line = t(S.isNew ? 'doneNew' : 'done');
    else if (st === 'expired') line = t('expired');
    else if (st === 'error') line = t(S.msg?.key || 'failed', S.msg?.vars);
    text(status, line);
    // The expired message is the button itself; the live region still announces it.
    // Without a QR the code's own label says what to do; the live region still announces it.
    const codeOnly = st === 'qr' && !img.getAttribute('src') && !S.note;
    status.classList.toggle('wxlogin-sr', codeOnly || st === 'expired' || (st === 'error' && S.msg?.key === 'imgFail'));
    const showHint = st === 'qr' && !!img.getAttribute('src') && layout() !== 'wechat';
    text(hint, showHint ? t('hint') : '');
    hint.hidden = !showHint;
    // The openid means nothing to a visitor, and a shoulder-surfer should not learn it.
    const showUser = st === 'done' && o.showOpenid === true;
    user.hidden = !showUser;
    text(user, showUser ? t('user', { user: S.user }) : '');
    renderTimer();
    // Keyboard users keep their place: on the copy button or the download link while shown.
    const active = doc.activeElement;
    const stays = (active === copy && !copy.hidden) || (active === download && !download.hidden);
    if (focused && !stays) (button.hidden ? box : button).focus();
  }

  function renderTimer() {
    const now = Date.now();
    if (S.state === 'qr') {
      const s = Math.max(0, Math.ceil((S.deadline - now) / 1000));
      timer.hidden = false;
      bar.hidden = false;
      text(countdown, t('left', { time: `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}` }));
      fill.style.width = `${S.total ? (100 * s) / S.total : 0}%`;
    } else if (S.state === 'error' && S.retryAt) {
      timer.hidden = false;
      bar.hidden = true;
      text(countdown, t('retryIn', { s: Math.max(0, Math.ceil((S.retryAt - now) / 1000)) }));
    } else {
      timer.hidden = true;
    }
  }

  function tick() {
    renderTimer();
    // The server says when a code expired; expire here only if that never arrives.
    if (S.state === 'qr' && Date.now() > S.deadline + GRACE_MS) expire();
  }

  function expire() {
    stop();
    forget();
    set('expired');
  }

  function stop() {
    S.gen += 1;
    if (S.es) {
      S.es.onmessage = S.es.onerror = null;
      S.es.close();
      S.es = null;
    }
    clearInterval(timers.tick);
    clearTimeout(timers.poll);
    clearTimeout(timers.retry);
    clearTimeout(timers.first);
    S.retryAt = 0;
    S.note = '';
  }

  function report(err) {
    if (typeof o.onError === 'function') {
      try { o.onError(err); } catch (e) { console.error(e); }
    }
  }

  async function token(fresh) {
    if (typeof o.getToken === 'function') {
      if (fresh || !S.tok) S.tok = String(await o.getToken());
    } else {
      S.tok = String(o.token ?? '');
    }
    return S.tok;
  }

  /** Shows an error; with `after` seconds, tries again by itself after them. */
  function fail(key, err, vars = {}, after = 0) {
    stop();
    const g = S.gen;
    if (after > 0) {
      S.retryAt = Date.now() + after * 1000;
      timers.retry = setTimeout(() => { if (g === S.gen) start(); }, after * 1000);
      timers.tick = setInterval(renderTimer, 1000);
    }
    set('error', { key, vars, retry: true });
    report(err);
  }

  let backoff = 0;

  async function start(after401 = false) {
    stop();
    const g = S.gen;
    S.scene = null;
    S.id = '';
    S.code = '';
    S.account = '';
    S.png = '';
    S.copied = '';
    img.removeAttribute('src');
    set('loading');
    let tok;
    try {
      tok = await token(true);
    } catch (e) {
      if (g === S.gen) fail('token', wxError('token', `getToken failed: ${e?.message || e}`));
      return;
    }
    if (g !== S.gen) return;
    const url = `${base}/sse?token=${encodeURIComponent(tok)}${lang === 'en' ? '&lang=en' : ''}${accountParam()}`;
    // After a reload: the server resends the kept code (or a new one if it is gone). EventSource
    // cannot set Last-Event-ID itself, hence ?id= on this one request.
    const resume = saved();
    const es = (S.es = new EventSource(resume ? `${url}&id=${encodeURIComponent(resume)}` : url));
    let opened = false;
    let errors = 0;
    if (firstEventMs > 0) {
      // wxlogin sends the QR code at once; silence means something in between (a proxy that
      // buffers responses) holds the stream back, and waiting longer would not help.
      timers.first = setTimeout(() => {
        if (g !== S.gen || opened) return;
        fail('silent', wxError('timeout', `no event from wxlogin within ${firstEventMs} ms (is a proxy buffering /sse?)`));
      }, firstEventMs);
    }
    es.onmessage = (ev) => {
      if (g !== S.gen) return;
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      if (!m || typeof m !== 'object') return;
      opened = true;
      clearTimeout(timers.first);
      errors = 0;
      backoff = 0;
      handle(m, g, ev.lastEventId);
    };
    es.onerror = () => {
      if (g !== S.gen) return;
      if (!opened) {
        // EventSource hides the status; ask once with fetch to learn it.
        es.onerror = null;
        es.close();
        probe(url, resume, g, after401);
        return;
      }
      errors += 1;
      if (es.readyState === EventSource.CLOSED || errors >= 3) {
        es.onmessage = es.onerror = null;
        es.close();
        poll(g);
      } else if (S.state === 'qr') {
        // The browser reconnects by itself, naming the last event; the server resumes the scene.
        S.note = 'reconnecting';
        render();
      }
    };
  }

  async function probe(url, resume, g, after401) {
    const ctl = new AbortController();
    let res = null;
    try {
      const headers = resume ? { 'Last-Event-ID': resume } : {};
      res = await fetch(url, { signal: ctl.signal, cache: 'no-store', credentials: 'omit', headers });
    } catch {
      res = null;
    }
    ctl.abort(); // only the status and headers matter: a 200 would be a stream
    if (g !== S.gen) return;
    const st = res ? res.status : 0;
    if (st === 401) {
      if (typeof o.getToken === 'function' && !after401) start(true);
      else fail('token', wxError('unauthorized', 'wxlogin refused the token', 401));
    } else if (st === 503 || st === 429) {
      const ra = parseInt(res.headers.get('retry-after') || '', 10);
      fail('busy', wxError('unavailable', 'wxlogin cannot issue a QR code now', st), {}, ra > 0 ? Math.min(ra, 600) : 5);
    } else {
      // Network trouble, or a stream that works now: try again, a little later each time.
      backoff = Math.min(60, backoff ? backoff * 2 : 3);
      if (st === 0 || (st >= 200 && st < 300)) fail('network', wxError('network', 'cannot reach wxlogin', st), {}, backoff);
      else fail('failed', wxError('http', `wxlogin answered HTTP ${st}`, st), { status: st }, backoff);
    }
  }

  function handle(m, g, id) {
    if (typeof m.userId === 'string' && m.userId) {
      login(m);
    } else if (m.event === 'timeout') {
      expire();
    } else if (m.scene_id) {
      // A resumed stream repeats the scene with the time it has left.
      const resumed = S.scene === String(m.scene_id);
      S.scene = String(m.scene_id);
      S.id = typeof id === 'string' ? id : '';
      const secs = Number(m.timeout_seconds) > 0 ? Number(m.timeout_seconds) : 120;
      S.total = resumed ? Math.max(S.total, secs) : secs;
      S.deadline = Date.now() + secs * 1000;
      S.code = typeof m.login_code === 'string' && /^\d+$/.test(m.login_code) ? m.login_code : '';
      S.oauth = m.oauth === true;
      S.account = typeof m.account_qrcode_url === 'string' && /^https?:\/\//.test(m.account_qrcode_url) ? m.account_qrcode_url : '';
      // A code-only stream (LOGIN_MODES=code) has no QR code: no qrcode_url, no qrcode_svg.
      if (m.qrcode_svg || m.qrcode_url) {
        const src = abs(m.qrcode_svg || `/qrcode/${encodeURIComponent(S.scene)}.svg`);
        if (img.getAttribute('src') !== src) {
          img.src = src;
          S.png = '';
          if (layout() === 'phone') toPng(src, g);
        }
      } else {
        img.removeAttribute('src');
      }
      S.note = '';
      clearInterval(timers.tick);
      timers.tick = setInterval(() => { if (g === S.gen) tick(); }, 1000);
      keep();
      set('qr');
    }
  }

  /**
   * WeChat's album scanner does not read SVG: draw the QR into a canvas and offer it as a PNG.
   * The image is loaded with CORS (wxlogin answers any origin) so that the canvas can be read.
   */
  function toPng(src, g) {
    const pic = new Image();
    pic.crossOrigin = 'anonymous';
    pic.onload = () => {
      if (g !== S.gen || img.getAttribute('src') !== src) return;
      try {
        const side = 480;
        const margin = 32;
        const canvas = el(doc, 'canvas');
        canvas.width = canvas.height = side;
        const ctx = canvas.getContext('2d');
        ctx.fillStyle = '#fff';
        ctx.fillRect(0, 0, side, side);
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(pic, margin, margin, side - 2 * margin, side - 2 * margin);
        S.png = canvas.toDataURL('image/png');
        render();
      } catch { /* a tainted canvas: no download, the QR is still shown */ }
    };
    pic.src = src;
  }

  async function copyCode() {
    const value = S.code;
    if (!value) return;
    let ok = false;
    try {
      await navigator.clipboard.writeText(value);
      ok = true;
    } catch {
      // No Clipboard API (plain http, an old WebView, a refused permission): the old way.
      const ta = Object.assign(doc.createElement('textarea'), { value, readOnly: true });
      ta.setAttribute('aria-hidden', 'true');
      ta.style.cssText = 'position:fixed;top:0;left:0;opacity:0';
      doc.body.append(ta);
      ta.select();
      try { ok = doc.execCommand('copy'); } catch { ok = false; }
      ta.remove();
      copy.focus();
    }
    if (S.code !== value) return;
    S.copied = ok ? 'copied' : 'copyFail';
    render();
    clearTimeout(timers.copied);
    timers.copied = setTimeout(() => { S.copied = ''; render(); }, 2500);
  }

  /** A result came: "verifying" while onLogin's promise runs, then "done", or an error. */
  function login(m) {
    stop();
    forget();
    const g = S.gen;
    S.user = String(m.userId);
    S.isNew = m.event === 'subscribe';
    if (typeof o.onLogin !== 'function') {
      set('done');
      return;
    }
    set('verifying');
    let pending;
    try {
      const result = { userId: m.userId, event: m.event, login_token: m.login_token };
      if (typeof m.unionId === 'string' && m.unionId) result.unionId = m.unionId;
      pending = Promise.resolve(o.onLogin(result));
    } catch (e) {
      pending = Promise.reject(e);
    }
    pending.then(
      () => { if (g === S.gen && !S.destroyed) set('done'); },
      (e) => {
        if (g !== S.gen || S.destroyed) return;
        console.error(e);
        // The login token is spent or refused: the way on is a new code (the retry button).
        fail('loginFailed', Object.assign(wxError('login', `onLogin failed: ${e?.message || e}`), { cause: e }));
      },
    );
  }

  /** `&account=<name>` for an account other than the default one (ACCOUNTS_FILE); nothing else. */
  function accountParam() {
    const a = String(o.account || 'default');
    return a === 'default' ? '' : `&account=${encodeURIComponent(a)}`;
  }

  /** The stream keeps failing: ask the status endpoint every 2 s instead. */
  function poll(g) {
    S.es = null;
    S.note = 'reconnecting';
    render();
    let refreshed = false;
    const once = async () => {
      if (g !== S.gen) return;
      if (Date.now() > S.deadline + GRACE_MS) {
        expire();
        return;
      }
      try {
        // The event id proves this page is the stream's; as a header it stays out of access logs.
        const res = await fetch(
          `${base}/login/${encodeURIComponent(S.scene)}/status?token=${encodeURIComponent(S.tok)}${accountParam()}`,
          { cache: 'no-store', credentials: 'omit', headers: S.id ? { 'Last-Event-ID': S.id } : {} },
        );
        if (g !== S.gen) return;
        if (res.status === 401) {
          if (typeof o.getToken !== 'function' || refreshed) {
            fail('token', wxError('unauthorized', 'wxlogin refused the token', 401));
            return;
          }
          refreshed = true;
          await token(true);
        } else if (res.status === 404 || res.status === 410) {
          expire();
          return;
        } else if (res.ok) {
          const m = await res.json();
          if (g !== S.gen) return;
          if (m.status === 'done') return login(m);
          if (m.status === 'expired') {
            expire();
            return;
          }
          if (S.note) {
            S.note = '';
            render();
          }
        }
      } catch {
        // Offline for a moment: keep asking until the code's time is up.
      }
      if (g === S.gen) timers.poll = setTimeout(once, POLL_MS);
    };
    once();
  }

  /**
   * Inside WeChat: off to WeChat's authorization through wxlogin, which brings this page back
   * with a handle in the fragment. The page token goes in the URL of this one request to wxlogin
   * (not to WeChat: wxlogin answers with no-referrer).
   */
  function oauthStart() {
    const here = new URL(String(o.returnTo || globalThis.location.href));
    here.hash = '';
    const q = new URLSearchParams({ token: S.tok, account: String(o.account || 'default'), return_to: here.href });
    stop();
    forget();
    set('loading');
    globalThis.location.assign(`${base}/oauth/authorize?${q}`);
  }

  /**
   * Back from WeChat: the handle (or the refusal) is taken out of the URL at once, so that it is
   * neither bookmarked, shared nor sent again; the handle is traded once for the login.
   * `true` when the page came back from WeChat (the caller then starts no stream).
   */
  function oauthReturn() {
    const loc = globalThis.location;
    const hash = String(loc?.hash || '');
    const m = /^#wxlogin_oauth(_error)?=([A-Za-z0-9_-]{1,64})$/.exec(hash);
    if (!m) return false;
    try { globalThis.history.replaceState(globalThis.history.state, '', loc.pathname + loc.search); } catch { loc.hash = ''; }
    if (m[1]) {
      S.oauthFailed = true;
      start();
      return true;
    }
    stop();
    const g = S.gen;
    set('verifying');
    fetch(`${base}/oauth/result`, {
      method: 'POST',
      cache: 'no-store',
      credentials: 'omit',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ handle: m[2], account: String(o.account || 'default') }),
    }).then(async (res) => {
      if (g !== S.gen) return;
      const r = res.ok ? await res.json() : null;
      if (g !== S.gen) return;
      if (r && typeof r.userId === 'string' && r.userId) login(r);
      else {
        report(wxError('oauth', `wxlogin refused the login inside WeChat (HTTP ${res.status})`, res.status));
        start();
      }
    }, (e) => {
      if (g !== S.gen) return;
      report(wxError('network', `cannot reach wxlogin: ${e?.message || e}`));
      start();
    });
    return true;
  }

  img.addEventListener('error', () => {
    if (S.state === 'qr' && img.getAttribute('src')) fail('imgFail', wxError('image', 'the QR image failed to load'));
  });
  button.addEventListener('click', () => start());
  copy.addEventListener('click', () => { copyCode(); });
  oauthBtn.addEventListener('click', () => oauthStart());

  if (!oauthReturn()) start();

  return {
    /** Abandons the current code and shows a new one. */
    refresh() {
      if (S.destroyed) return;
      forget();
      start();
    },
    /** Stops everything and empties the element. */
    destroy() {
      if (S.destroyed) return;
      stop();
      forget();
      S.destroyed = true;
      element.replaceChildren();
      element.classList.remove('wxlogin');
      delete element.dataset.wxloginState;
      delete element.dataset.wxloginLayout;
      clearTimeout(timers.copied);
      element.style.removeProperty('--wxlogin-size');
    },
    /** Switches the texts between 'zh' and 'en' without a new code. */
    setLang(l) {
      lang = l === 'en' ? 'en' : 'zh';
      render();
    },
  };
}
